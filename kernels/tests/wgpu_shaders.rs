//! Every WGSL file of the wgpu backend, and every module the backend builds from them, parses
//! and validates with naga (the front end wgpu compiles them with), without a GPU.
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};

/// The file name stems each kernel family must have at least one file for.
const FAMILIES: [&str; 6] = ["matmul", "rms_norm", "rope", "silu_mul", "add", "attention"];
/// The weight formats whose matmul `unit` has its own file.
const FORMATS: [&str; 6] = ["q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k"];

fn validate(name: &str, src: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| format!("{name}: {}", e.emit_to_string(src)))?;
    // f16 packing in f32 (the f16 KV cache): every WebGPU-compliant adapter has it, and the
    // backend builds those kernels only where the adapter says so.
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
    )
    .validate(&module)
    .map_err(|e| format!("{name}: {}", e.emit_to_string(src)))?;
    Ok(())
}

fn shader_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wgpu/shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read shaders dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_file_validates() {
    let files = shader_files();
    let mut failures = Vec::new();
    let mut stems = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let mut src = std::fs::read_to_string(path).expect("read shader");
        // bytes.wgsl reads the `w` its includer declares: it is checked within the formats'.
        if name == "bytes.wgsl" {
            continue;
        }
        if FORMATS.iter().any(|f| name.starts_with(f)) {
            src = format!("{src}\n{}", realm_kernels::wgpu::BYTES);
        }
        println!("checked {name}");
        if let Err(e) = validate(&name, &src) {
            failures.push(e);
        }
        stems.push(name.trim_end_matches(".wgsl").to_string());
    }
    assert!(failures.is_empty(), "{} shader files fail:\n{}", failures.len(), failures.join("\n"));
    for family in FAMILIES.iter().chain(&FORMATS) {
        assert!(stems.iter().any(|s| s.starts_with(family)), "no shader file for {family}: checked {stems:?}");
    }
}

#[test]
fn every_built_module_validates() {
    let modules = realm_kernels::wgpu::shader_modules();
    let mut failures = Vec::new();
    for (name, src) in &modules {
        println!("checked module {name}");
        if let Err(e) = validate(name, src) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{} modules fail:\n{}", failures.len(), failures.join("\n"));
    // F32 plus one per quantized format.
    let matmuls = modules.iter().filter(|(n, _)| n.starts_with("matmul")).count();
    assert_eq!(matmuls, FORMATS.len() + 1, "matmul modules: {:?}", modules.iter().map(|m| &m.0).collect::<Vec<_>>());
}
