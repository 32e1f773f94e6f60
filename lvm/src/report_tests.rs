//! Parsing of reports captured from Debian 12's lvm2 2.03.16 (the tests under `tests/`
//! check the same against live commands).

use super::*;

const LVS_JSON: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"lv1", "lv_uuid":"17q1zw-SLQK-U6zx-DJfC-4Y0L-Z0Z4-mittHf", "vg_name":"testvg", "lv_attr":"-wi-XX----", "lv_size":"536870912", "lv_tags":"IU_x,MD_1", "vg_extent_size":"134217728", "seg_start_pe":"2", "seg_size_pe":"2", "segtype":"linear", "stripes":"1", "seg_pe_ranges":"/dev/loop0:3-4"},
                  {"lv_name":"lv1", "lv_uuid":"17q1zw-SLQK-U6zx-DJfC-4Y0L-Z0Z4-mittHf", "vg_name":"testvg", "lv_attr":"-wi-XX----", "lv_size":"536870912", "lv_tags":"IU_x,MD_1", "vg_extent_size":"134217728", "seg_start_pe":"0", "seg_size_pe":"2", "segtype":"linear", "stripes":"1", "seg_pe_ranges":"/dev/loop0:0-1"},
                  {"lv_name":"lv2", "lv_uuid":"bzRRs7-c5Oe-n7Tg-pBeo-k4pF-Q8r0-GgfdFU", "vg_name":"testvg", "lv_attr":"-wi-a-----", "lv_size":"134217728", "lv_tags":"", "vg_extent_size":"134217728", "seg_start_pe":"0", "seg_size_pe":"1", "segtype":"linear", "stripes":"1", "seg_pe_ranges":"/dev/loop0:2-2"}
              ]
          }
      ]
  }
"#;

#[test]
fn lvs_json_folds_segments_per_lv_in_logical_order() {
    let rows = parse_json("lvs", "lv", LVS_JSON).unwrap();
    assert_eq!(rows.len(), 3);
    let lvs = lvs_from_rows("lvs", &rows).unwrap();
    assert_eq!(lvs.len(), 2);
    let lv1 = &lvs[0];
    assert_eq!(lv1.name, "lv1");
    assert_eq!(lv1.size, 512 << 20);
    assert_eq!(lv1.extent_size, 128 << 20);
    assert_eq!(lv1.tags, ["IU_x", "MD_1"]);
    assert_eq!(lv1.dm_active(), None);
    let starts: Vec<u64> = lv1.segments.iter().map(|s| s.start_extent).collect();
    assert_eq!(starts, [0, 2]);
    assert_eq!(
        lv1.segments[1].ranges,
        [PeRange {
            pv: PathBuf::from("/dev/loop0"),
            first: 3,
            last: 4
        }]
    );
    assert!(lvs[1].tags.is_empty());
    assert_eq!(lvs[1].dm_active(), Some(true));
    assert!(!lvs[1].dm_open());
}

#[test]
fn lvs_separated_gives_the_same_values() {
    let text = "  lv2|-wi-a-----|bzRRs7-c5Oe-n7Tg-pBeo-k4pF-Q8r0-GgfdFU|134217728||testvg|134217728|0|1|linear|1|/dev/loop0:2-2\n";
    let fields = [
        "lv_name",
        "lv_attr",
        "lv_uuid",
        "lv_size",
        "lv_tags",
        "vg_name",
        "vg_extent_size",
        "seg_start_pe",
        "seg_size_pe",
        "segtype",
        "stripes",
        "seg_pe_ranges",
    ];
    let rows = parse_separated("lvs", &fields, text).unwrap();
    let from_sep = lvs_from_rows("lvs", &rows).unwrap();
    let from_json = lvs_from_rows("lvs", &parse_json("lvs", "lv", LVS_JSON).unwrap()).unwrap();
    assert_eq!(from_sep[0], from_json[1]);
}

#[test]
fn separated_wrong_field_count_is_parse_error() {
    let err = parse_separated("lvs", &["a", "b"], "  x|y|z\n").unwrap_err();
    assert_eq!(err.code(), "Parse");
}

#[test]
fn vgs_json_collects_pv_names_and_skips_unknown() {
    let text = r#"{"report":[{"vg":[
      {"vg_name":"testvg", "vg_uuid":"U1", "vg_attr":"wz-pn-", "vg_size":"7784628224", "vg_free":"7113539584", "vg_extent_size":"134217728", "vg_extent_count":"58", "vg_free_count":"53", "vg_tags":"MDT_A=2,RHAT_storage_domain", "vg_mda_size":"134217728", "vg_mda_free":"67106816", "lv_count":"3", "pv_count":"3", "pv_name":"/dev/loop0"},
      {"vg_name":"testvg", "vg_uuid":"U1", "vg_attr":"wz-pn-", "vg_size":"7784628224", "vg_free":"7113539584", "vg_extent_size":"134217728", "vg_extent_count":"58", "vg_free_count":"53", "vg_tags":"MDT_A=2,RHAT_storage_domain", "vg_mda_size":"134217728", "vg_mda_free":"67106816", "lv_count":"3", "pv_count":"3", "pv_name":"[unknown]"},
      {"vg_name":"testvg", "vg_uuid":"U1", "vg_attr":"wz-pn-", "vg_size":"7784628224", "vg_free":"7113539584", "vg_extent_size":"134217728", "vg_extent_count":"58", "vg_free_count":"53", "vg_tags":"MDT_A=2,RHAT_storage_domain", "vg_mda_size":"134217728", "vg_mda_free":"67106816", "lv_count":"3", "pv_count":"3", "pv_name":"/dev/loop1"}
    ]}]}"#;
    let vgs = vgs_from_rows("vgs", &parse_json("vgs", "vg", text).unwrap()).unwrap();
    assert_eq!(vgs.len(), 1);
    let vg = &vgs[0];
    assert_eq!(
        vg.pv_names,
        [PathBuf::from("/dev/loop0"), PathBuf::from("/dev/loop1")]
    );
    assert!(vg.partial());
    assert!(vg.writable());
    assert!(vg.has_tag("RHAT_storage_domain"));
    assert_eq!(vg.extent_size, 128 << 20);
    assert_eq!(vg.free_count, 53);
}

#[test]
fn pvs_json_orphan_pv_has_no_vg() {
    let text = r#"{"report":[{"pv":[
      {"pv_name":"/dev/loop1", "pv_uuid":"T6", "vg_name":"", "vg_uuid":"", "pv_size":"4294967296", "dev_size":"4294967296", "pe_start":"135266304", "pv_pe_count":"0", "pv_pe_alloc_count":"0", "pv_mda_count":"2", "pv_mda_used_count":"0", "pv_tags":""}
    ]}]}"#;
    let pvs = pvs_from_rows("pvs", &parse_json("pvs", "pv", text).unwrap()).unwrap();
    assert_eq!(pvs[0].vg_name, None);
    assert_eq!(pvs[0].pe_start, 129 << 20);
    assert_eq!(pvs[0].mda_used_count, 0);
}

#[test]
fn json_errors_are_parse_errors() {
    for text in [
        "",
        "{}",
        r#"{"report":[{"lv":{}}]}"#,
        r#"{"report":[{"lv":[1]}]}"#,
    ] {
        assert_eq!(
            parse_json("lvs", "lv", text).unwrap_err().code(),
            "Parse",
            "{text}"
        );
    }
    let missing = r#"{"report":[{"lv":[{"lv_name":"a"}]}]}"#;
    let rows = parse_json("lvs", "lv", missing).unwrap();
    assert_eq!(lvs_from_rows("lvs", &rows).unwrap_err().code(), "Parse");
}

#[test]
fn pe_ranges_bad_item_is_parse_error() {
    assert_eq!(
        parse_pe_ranges("lvs", "/dev/x:1").unwrap_err().code(),
        "Parse"
    );
    assert_eq!(
        parse_pe_ranges("lvs", "/dev/a:0-1 /dev/b:4-5")
            .unwrap()
            .len(),
        2
    );
}
