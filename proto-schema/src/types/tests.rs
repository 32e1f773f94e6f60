//! Decoding and encoding tests of the wire types.

use super::*;
use serde_json::json;

#[test]
fn human_sizes() {
    assert_eq!(parse_human_size("4096"), Ok(4096));
    assert_eq!(parse_human_size("4K"), Ok(4096));
    assert_eq!(parse_human_size(" 512MiB "), Ok(512 << 20));
    assert_eq!(parse_human_size("1g"), Ok(1 << 30));
    assert_eq!(parse_human_size("2TB"), Ok(2 << 40));
    assert_eq!(parse_human_size("3 M"), Ok(3 << 20));
    assert!(parse_human_size("1X").is_err());
    assert!(parse_human_size("G").is_err());
    assert!(parse_human_size("-1G").is_err());
    assert!(parse_human_size("1.5G").is_err());
    assert!(parse_human_size("9000000T").unwrap_err().contains("beyond"));
    assert!(parse_human_size("8388608T").is_err()); // 2^63 exactly
    assert_eq!(parse_human_size("8388607T"), Ok(8388607u64 << 40));
}

#[test]
fn uuid_is_strict() {
    assert!(serde_json::from_value::<Uuid>(json!("5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60")).is_ok());
    for bad in [
        "",
        "../../etc",
        "a/b",
        "5F7D1F2E-29A6-4F0B-9A35-1C2B3D4E5F60",
        "5f7d1f2e29a64f0b9a351c2b3d4e5f60",
        "{5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60}",
        "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f6g",
        "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60\n",
    ] {
        assert!(
            serde_json::from_value::<Uuid>(json!(bad)).is_err(),
            "{bad:?}"
        );
    }
    assert!(serde_json::from_value::<Uuid>(json!(5)).is_err());
}

#[test]
fn flag_accepts_strings() {
    for (v, want) in [
        (json!(true), true),
        (json!("TRUE"), true),
        (json!("false"), false),
        (json!("False"), false),
    ] {
        assert_eq!(serde_json::from_value::<Flag>(v).unwrap().0, want);
    }
    assert!(serde_json::from_value::<Flag>(json!("yes")).is_err());
    assert!(serde_json::from_value::<Flag>(json!(1)).is_err());
}

#[test]
fn sizes_accept_strings_and_refuse_overflow() {
    assert_eq!(
        serde_json::from_value::<Size>(json!("1073741824"))
            .unwrap()
            .0,
        1 << 30
    );
    assert_eq!(serde_json::from_value::<Size>(json!(4096)).unwrap().0, 4096);
    assert_eq!(serde_json::to_value(Size(5)).unwrap(), json!("5"));
    for bad in [
        json!(-1),
        json!("-1"),
        json!("1e9"),
        json!(1.5),
        json!("9223372036854775808"),
        json!(9223372036854775808u64),
        json!("abc"),
        json!(""),
        json!(null),
        json!(1e30),
    ] {
        assert!(
            serde_json::from_value::<Size>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    assert!(serde_json::from_value::<Capacity>(json!(0)).is_err());
    assert!(serde_json::from_value::<Capacity>(json!("0")).is_err());
}

#[test]
fn generation_range_and_wrap() {
    assert_eq!(
        serde_json::from_value::<Generation>(json!(999)).unwrap().0,
        999
    );
    assert!(serde_json::from_value::<Generation>(json!(1000)).is_err());
    assert!(serde_json::from_value::<Generation>(json!(-1)).is_err());
    assert_eq!(Generation(999).next(), Generation(0));
    assert_eq!(Generation(4).next(), Generation(5));
}

#[test]
fn operation_words_and_numbers() {
    assert_eq!(
        serde_json::from_value::<ImageOperation>(json!(1)).unwrap(),
        ImageOperation::Copy
    );
    assert_eq!(
        serde_json::from_value::<ImageOperation>(json!("MOVE")).unwrap(),
        ImageOperation::Move
    );
    assert!(serde_json::from_value::<ImageOperation>(json!(0)).is_err());
    assert!(serde_json::from_value::<ImageOperation>(json!(3)).is_err());
}

#[test]
fn description_refuses_control_characters() {
    assert!(serde_json::from_value::<Description>(json!("disk {\"a\":1}")).is_ok());
    assert!(serde_json::from_value::<Description>(json!("a\nLEGALITY=LEGAL")).is_err());
    assert!(serde_json::from_value::<Description>(json!("a\u{0}b")).is_err());
    assert!(serde_json::from_value::<Description>(json!("a\u{2028}b")).is_err());
    assert!(serde_json::from_value::<Description>(json!("a\u{85}b")).is_err());
}

#[test]
fn endpoint_ignores_unknown_fields_and_checks_type() {
    let e: Endpoint = serde_json::from_value(json!({
        "endpoint_type": "div", "sd_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60",
        "img_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f61", "vol_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f62",
        "prepared": "false", "legal": true, "generation": 3
    })).unwrap();
    assert_eq!(e.generation, Some(Generation(3)));
    let bad = serde_json::from_value::<Endpoint>(json!({
        "endpoint_type": "external", "sd_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f60",
        "img_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f61", "vol_id": "5f7d1f2e-29a6-4f0b-9a35-1c2b3d4e5f62"
    }));
    assert!(bad.is_err());
}

#[test]
fn job_info_omits_absent_progress_and_error() {
    let info = JobInfo {
        id: Uuid::new_v4(),
        status: JobStatus::Pending,
        description: "copy_data".into(),
        job_type: "storage".into(),
        progress: None,
        error: None,
        bytes_done: 0,
        bytes_total: 0,
        rate_bps: 0,
        eta_s: None,
        aborting: false,
        result: None,
        copies: Vec::new(),
    };
    let v = serde_json::to_value(&info).unwrap();
    assert!(v.get("progress").is_none() && v.get("error").is_none() && v.get("aborting").is_none());
    let with = JobInfo {
        progress: Some(100.0),
        ..info
    };
    assert!(serde_json::to_value(&with).unwrap()["progress"].is_f64());
}

#[test]
fn qcow2_attributes_refuse_unknown_keys_and_values() {
    let ok: Qcow2Attributes = serde_json::from_value(serde_json::json!({"compat": "1.1"})).unwrap();
    assert_eq!(ok.compat, Qcow2Compat::V1_1);
    for bad in [
        serde_json::json!({"compat": "1.1", "cluster_size": 65536}),
        serde_json::json!({"compat": "2.0"}),
        serde_json::json!({}),
    ] {
        assert!(
            serde_json::from_value::<Qcow2Attributes>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn bitmap_names() {
    assert!(BitmapName::parse("b0").is_ok());
    assert!(BitmapName::parse(&"x".repeat(1023)).is_ok());
    for bad in ["", "-b", "a\nb", &"x".repeat(1024)] {
        assert!(BitmapName::parse(bad).is_err(), "{bad:?}");
    }
    assert!(serde_json::from_value::<BitmapName>(serde_json::json!("--add")).is_err());
}

#[test]
fn subchain_info_generation_is_optional() {
    let s: SubchainInfo = serde_json::from_value(serde_json::json!({
        "sd_id": BLANK_UUID, "img_id": BLANK_UUID, "top_id": BLANK_UUID, "base_id": BLANK_UUID
    }))
    .unwrap();
    assert_eq!(s.base_generation, None);
}

#[test]
fn sequence_range() {
    assert_eq!(
        serde_json::from_value::<Sequence>(json!(3)).unwrap(),
        Sequence(3)
    );
    assert_eq!(
        serde_json::from_value::<Sequence>(json!("7")).unwrap(),
        Sequence(7)
    );
    assert!(serde_json::from_value::<Sequence>(json!(4294967295u64)).is_ok());
    for bad in [json!(4294967296u64), json!(-1), json!(1.5), json!("x")] {
        assert!(
            serde_json::from_value::<Sequence>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}
