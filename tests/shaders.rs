//! Static checks of the WGSL kernels with naga, no GPU needed.
//!
//! Every shader from [`wgpu_optim::shader_sources`] must parse and validate, expose the expected
//! compute entry points, and translate to every backend wgpu may use (SPIR-V, MSL, HLSL and
//! GLSL ES 3.10), so that a shader error shows up here rather than only on some user's GPU. The
//! layouts of the structs the host writes are checked against naga's in the crate's own unit
//! tests (src/gpu/kernels.rs), where the `#[repr(C)]` Rust structs are visible.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};

/// Parses and validates one shader, panicking with the file name and naga's report.
/// Shaders on the native f16 path need naga's f16 capability; the rest must validate without.
fn parse_and_validate(name: &str, source: &str) -> (Module, ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| {
        panic!(
            "{name} does not parse:\n{}",
            e.emit_to_string_with_path(source, name)
        )
    });
    let capabilities = if native_f16(name) {
        Capabilities::SHADER_FLOAT16
    } else {
        Capabilities::default()
    };
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "{name} does not validate:\n{}",
                e.emit_to_string_with_path(source, name)
            )
        });
    (module, info)
}

/// Whether the module or pipeline labelled `name` is on the native f16 path, which only
/// adapters with `shader-f16` run: never GL, and on DX12 with shader model 6.2.
fn native_f16(name: &str) -> bool {
    name.contains("native f16")
}

/// Every shader module, parsed and validated, with its pipelines.
fn modules() -> Vec<(wgpu_optim::ShaderSource, Module, ModuleInfo)> {
    wgpu_optim::shader_sources()
        .into_iter()
        .map(|shader| {
            let (module, info) = parse_and_validate(&shader.label, &shader.source);
            (shader, module, info)
        })
        .collect()
}

/// Every pipeline the crate makes: its name, its entry point, and its module with the
/// pipeline-overridable constants set, as wgpu sets them before translating.
fn pipelines() -> Vec<(String, String, Module, ModuleInfo)> {
    let mut out = Vec::new();
    for (shader, module, info) in modules() {
        for (entry, constants) in &shader.pipelines {
            let mut values = naga::back::PipelineConstants::default();
            for (name, value) in constants {
                values.insert(name.clone(), *value);
            }
            let (m, i) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, entry)),
                &values,
            )
            .unwrap_or_else(|e| panic!("{}: {entry} {constants:?}: {e}", shader.label));
            let name = format!("{}: {entry} {constants:?}", shader.label);
            out.push((name, entry.clone(), m.into_owned(), i.into_owned()));
        }
    }
    out
}

fn spirv_words(module: &Module, info: &ModuleInfo, entry_point: &str) -> Result<Vec<u32>, String> {
    let pipeline = spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry_point.into(),
    };
    spv::write_vec(module, info, &spv::Options::default(), Some(&pipeline))
        .map_err(|e| e.to_string())
}

fn to_spirv(module: &Module, info: &ModuleInfo, entry_point: &str) -> Result<(), String> {
    spirv_words(module, info, entry_point).map(drop)
}

fn to_msl(module: &Module, info: &ModuleInfo, entry_point: &str) -> Result<(), String> {
    let options = msl::Options {
        lang_version: (2, 0),
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry_point.into())),
        ..Default::default()
    };
    msl::write_string(module, info, &options, &pipeline)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn to_hlsl(module: &Module, info: &ModuleInfo, entry_point: &str) -> Result<(), String> {
    // Shader model 6.2 brings 16-bit types.
    let float16 = module
        .types
        .iter()
        .any(|(_, t)| t.inner.scalar() == Some(naga::Scalar::F16));
    let options = hlsl::Options {
        shader_model: if float16 {
            hlsl::ShaderModel::V6_2
        } else {
            hlsl::ShaderModel::V6_0
        },
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry_point.into())),
    };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(module, info, None)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn to_glsl_es310(module: &Module, info: &ModuleInfo, entry_point: &str) -> Result<(), String> {
    glsl_es310_text(module, info, entry_point).map(drop)
}

fn glsl_es310_text(
    module: &Module,
    info: &ModuleInfo,
    entry_point: &str,
) -> Result<String, String> {
    let options = glsl::Options {
        version: glsl::Version::new_gles(310),
        ..Default::default()
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry_point.into(),
        multiview: None,
    };
    let mut out = String::new();
    glsl::Writer::new(
        &mut out,
        module,
        info,
        &options,
        &pipeline,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .map(|_| out)
    .map_err(|e| e.to_string())
}

#[test]
fn every_shader_parses_and_validates() {
    let modules = modules();
    let optimizers = modules
        .iter()
        .filter(|(s, ..)| !s.label.contains("reduce.wgsl") && !s.label.contains("gemm.wgsl"))
        .count();
    // Each optimizer file in the scalar and the vec4 access mode with read-only or shared
    // gradients, as the main kernel, the main kernel of a one-segment batch, and the edge
    // kernel, each without and with every gradient flag (24); with bf16 parameters, gradients
    // and state, with f16 parameters rounded stochastically beside f32 gradients and state,
    // with bf16 parameters and gradients, f32 state and master weights, rounded
    // stochastically, on the native f16 path with f16 parameters, gradients and state and
    // master weights, rounded stochastically, and on the automatic f16 path with f16
    // parameters and gradients beside f32 state, as the main and the edge kernel without and
    // with every flag (40); the reduction in both access modes over f32, f16 and bf16
    // gradients; and the matrix product, with read-only operands and with every operand
    // read-write.
    assert_eq!(optimizers % 64, 0);
    assert!(optimizers >= 64 * 4, "{optimizers} optimizer modules");
    // f16 arrays: every module of the native path (8 a shader), and the automatic path's
    // where elements are addressed one at a time (scalar access, the vec4 edge kernel: 6).
    let native = modules
        .iter()
        .filter(|(s, ..)| native_f16(&s.label))
        .count();
    assert_eq!(native * 64, optimizers * 14);
    assert_eq!(modules.len(), optimizers + 8);
}

#[test]
fn shaders_have_the_expected_compute_entry_points() {
    for (shader, module, _) in modules() {
        let mut found: Vec<&str> = Vec::new();
        for ep in &module.entry_points {
            assert_eq!(
                ep.stage,
                ShaderStage::Compute,
                "{}: entry point {} is not a compute shader",
                shader.label,
                ep.name
            );
            assert_eq!(
                ep.workgroup_size,
                [256, 1, 1],
                "{}: entry point {} has another workgroup size",
                shader.label,
                ep.name
            );
            found.push(&ep.name);
        }
        found.sort();
        // The template's `step` (the optimizer's formula) and `finalize`, and, for an update
        // that needs per-tensor sums (Lamb's, Adafactor's, Muon's, pytorch-optimizer's cautious
        // and stable_adamw), outside the edge dispatch's module, the sums' `sums` and
        // `combine_sums`; Adafactor's factor passes in every module of its shader (pipelines
        // only outside the edge dispatch's); or `reduce`.
        let outside_edges = !shader.label.contains("edges");
        let sums = [
            "lamb.wgsl",
            "adopt.wgsl",
            "ademamix.wgsl",
            "adafactor.wgsl",
            "muon.wgsl",
        ]
        .iter()
        .any(|f| shader.label.contains(f))
            && outside_edges;
        let factored = shader.label.contains("adafactor.wgsl");
        let want: &[&str] = if shader.label.contains("reduce.wgsl") {
            &["reduce"]
        } else if shader.label.contains("gemm.wgsl") {
            &["gemm", "gemm_combine"]
        } else if sums && factored {
            &[
                "combine_sums",
                "factor_lines",
                "factor_means",
                "finalize",
                "step",
                "sums",
            ]
        } else if sums {
            &["combine_sums", "finalize", "step", "sums"]
        } else if factored {
            &["factor_lines", "factor_means", "finalize", "step"]
        } else {
            &["finalize", "step"]
        };
        let want_pipelines: &[&str] = if factored && !outside_edges {
            &["finalize", "step"]
        } else {
            want
        };
        assert_eq!(found, want, "{}", shader.label);
        // Every entry point makes a pipeline, and `step` one per kernel of the class.
        for ep in want_pipelines {
            assert!(
                shader.pipelines.iter().any(|(e, _)| e == ep),
                "{}: no {ep} pipeline",
                shader.label
            );
        }
    }
}

#[test]
fn every_pipeline_translates_to_every_backend() {
    type Translate = fn(&Module, &ModuleInfo, &str) -> Result<(), String>;
    let backends: [(&str, Translate); 4] = [
        ("SPIR-V", to_spirv),
        ("MSL 2.0", to_msl),
        ("HLSL SM 6.0 (6.2 with f16)", to_hlsl),
        ("GLSL ES 3.10", to_glsl_es310),
    ];
    let pipelines = pipelines();
    // Every kernel of SGD (2), Adam (2), RMSprop (4) and Adagrad (1) at least.
    assert!(pipelines.len() >= 24 * 13, "{} pipelines", pipelines.len());
    for (name, entry, module, info) in pipelines {
        for (backend, translate) in backends {
            if backend.starts_with("GLSL") && native_f16(&name) {
                continue;
            }
            if let Err(e) = translate(&module, &info, &entry) {
                panic!("{name} fails to translate to {backend}: {e}");
            }
        }
    }
}

/// Whether an external validator is installed. Under CI (`CI=true`, where `.ci/run` installs
/// spirv-tools and glslang-tools) a missing tool fails the test instead of skipping it.
fn tool(name: &str) -> bool {
    let found = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{name} is not installed, and CI needs it"
        );
        eprintln!("{name} not installed: skipped (apt-get install spirv-tools glslang-tools)");
    }
    found
}

/// Runs `cmd` on a file holding `bytes`, failing with its output when it rejects the file.
fn external_check(cmd: &[&str], file_name: &str, bytes: &[u8], what: &str) {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-shaders-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file_name);
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} rejects {what}:\n{}{}",
        cmd[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn spirv_val_accepts_every_entry_point() {
    if !tool("spirv-val") {
        return;
    }
    for (name, entry, module, info) in pipelines() {
        let words = spirv_words(&module, &info, &entry).unwrap();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let file = format!("{entry}.spv");
        external_check(
            &["spirv-val", "--target-env", "vulkan1.1"],
            &file,
            &bytes,
            &name,
        );
    }
}

#[test]
fn glslang_accepts_every_entry_point_as_glsl_es() {
    if !tool("glslangValidator") {
        return;
    }
    for (name, entry, module, info) in pipelines().into_iter().filter(|p| !native_f16(&p.0)) {
        let text = glsl_es310_text(&module, &info, &entry).unwrap();
        let file = format!("{entry}.comp");
        external_check(&["glslangValidator"], &file, text.as_bytes(), &name);
    }
}
