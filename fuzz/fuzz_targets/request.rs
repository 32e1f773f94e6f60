//! The agent's request decoding, as the server does it: the JSON-RPC envelope (one request or a
//! batch), then the named parameters of the method into the `sdm_proto` parameter types. Never
//! panics; whatever decodes encodes again to something that decodes to the same value.

#![no_main]

use jsonrpsee::types::Request;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

macro_rules! roundtrip {
    ($t:ty, $text:expr) => {{
        if let Ok(p) = serde_json::from_str::<$t>($text) {
            let v = serde_json::to_value(&p).expect("decoded parameters serialize");
            let again: $t = serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("{v} does not decode again: {e}"));
            assert_eq!(
                serde_json::to_value(&again).unwrap(),
                v,
                "decode/encode is not stable"
            );
        }
    }};
}

fn params(method: &str, text: &str) {
    use sdm_proto::api::*;
    match method {
        "Host.getJobs" => roundtrip!(GetJobsParams, text),
        "Job.abort" => roundtrip!(AbortJobParams, text),
        "Job.delete" => roundtrip!(DeleteJobParams, text),
        "Job.subscribe" => roundtrip!(SubscribeJobParams, text),
        "StorageDomain.create" => roundtrip!(CreateDomainParams, text),
        "StorageDomain.attach" => roundtrip!(AttachDomainParams, text),
        "StorageDomain.detach" => roundtrip!(DetachDomainParams, text),
        "StorageDomain.getImages" => roundtrip!(GetImagesParams, text),
        "StorageDomain.check" => roundtrip!(CheckDomainParams, text),
        "StorageDomain.fix" => roundtrip!(FixDomainParams, text),
        "Image.getVolumes" => roundtrip!(GetVolumesParams, text),
        "Volume.create" => roundtrip!(CreateVolumeParams, text),
        "Volume.getInfo" => roundtrip!(GetVolumeInfoParams, text),
        "Volume.checksum" => roundtrip!(ChecksumVolumeParams, text),
        "SDM.copy_data" => roundtrip!(CopyDataParams, text),
        "SDM.update_volume" => roundtrip!(UpdateVolumeParams, text),
        "Image.move" => roundtrip!(MoveImageParams, text),
        "Image.delete" => roundtrip!(DeleteImageParams, text),
        _ => {}
    }
}

fn request(r: &Request) {
    let text = r.params.as_ref().map(|p| p.get()).unwrap_or("null");
    if text.trim_start().starts_with('{') {
        params(&r.method, text);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        request(&r);
    } else if let Ok(batch) = serde_json::from_slice::<Vec<&RawValue>>(data) {
        for entry in batch {
            if let Ok(r) = serde_json::from_str::<Request>(entry.get()) {
                request(&r);
            }
        }
    }
});
