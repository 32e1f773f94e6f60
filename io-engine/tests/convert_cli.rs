//! A manual entry point for timing one conversion with external tools (`/usr/bin/time -v`):
//! ignored in normal runs. The chain and destination come from the environment:
//!
//! ```text
//! SDM_CONVERT_SRC=top.qcow2[:qcow2][,parent:qcow2...]  SDM_CONVERT_DST=out  SDM_CONVERT_FMT=raw|qcow2 \
//!   cargo test --release -p sdm-io --test convert_cli -- --ignored --nocapture
//! ```

use std::path::PathBuf;

use sdm_io::{
    Control, ConvertDest, ConvertOptions, DestFormat, Engine, EngineConfig, ImageFormat, Layer,
    Qcow2Options,
};

fn layer(spec: &str) -> Layer {
    let (path, fmt) = spec.rsplit_once(':').unwrap_or((spec, "qcow2"));
    Layer {
        path: PathBuf::from(path),
        format: if fmt == "raw" {
            ImageFormat::Raw
        } else {
            ImageFormat::Qcow2
        },
    }
}

#[test]
#[ignore = "manual timing entry point; needs SDM_CONVERT_* in the environment"]
fn convert_from_env() {
    let src: Vec<Layer> = std::env::var("SDM_CONVERT_SRC")
        .expect("SDM_CONVERT_SRC")
        .split(',')
        .map(layer)
        .collect();
    let dst = PathBuf::from(std::env::var("SDM_CONVERT_DST").expect("SDM_CONVERT_DST"));
    let format = match std::env::var("SDM_CONVERT_FMT").as_deref() {
        Ok("raw") => DestFormat::Raw,
        _ => DestFormat::Qcow2(Qcow2Options::default()),
    };
    if !dst.exists() {
        std::fs::File::create(&dst).expect("create destination");
    }
    let e = Engine::new(EngineConfig::default());
    let d = ConvertDest {
        path: dst,
        format,
        size: None,
        create: true,
        reads_zero: true,
    };
    let t = std::time::Instant::now();
    let r = e
        .convert(&src, &d, &ConvertOptions::default(), &Control::new())
        .expect("convert");
    println!("{:?} {r:?}", t.elapsed());
}
