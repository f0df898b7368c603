//! `wgpu-optim`: run the crate's optimizer kernels from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use wgpu_optim::{
    Access, ClipGrad, Context, DType, Error, F16Path, GradScaler, NormType, OptimizerConfig,
    Precision, StateDType, bench, replay, schedule, validate,
};

#[derive(Parser)]
#[command(version, about = "Fused GPU optimizer kernels with PyTorch semantics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay recorded gradients through an optimizer on the GPU and write the final
    /// parameters and optimizer state.
    Replay {
        /// The optimizer as JSON with PyTorch's class and argument names, e.g.
        /// '{"type":"Adam","lr":0.001,"amsgrad":true}'.
        #[arg(long)]
        optimizer: String,
        /// Initial parameters by name (safetensors; F32, F16 or BF16, each kept in its type).
        #[arg(long)]
        params: PathBuf,
        /// For each parameter name, gradients with a leading step dimension (safetensors; F32,
        /// F16 or BF16).
        #[arg(long)]
        grads: PathBuf,
        /// The state's type: `param` (each parameter's, as PyTorch keeps it), `f32` or `bf16`.
        #[arg(long, value_parser = parse_named::<StateDType>, default_value = "param")]
        state_dtype: StateDType,
        /// Keep an f32 master copy of each 16-bit parameter (as Apex and llm.c do): the update
        /// runs on it, and the output holds it as `<name>.master`.
        #[arg(long)]
        master_weights: bool,
        /// Round 16-bit parameters stochastically when stored, with random bits from this
        /// seed (a 32-bit integer), rather than to nearest.
        #[arg(long, value_name = "SEED")]
        stochastic_rounding: Option<u32>,
        /// How f16 is stored on the GPU: `auto` (native f16 arrays where elements are
        /// addressed one at a time, on adapters with `shader-f16`), `packed` (two to a 32-bit
        /// word, on every adapter) or `native` (`shader-f16` arrays throughout).
        #[arg(long, value_parser = parse_named::<F16Path>, default_value = "auto")]
        f16_path: F16Path,
        /// Output: final parameters by name and each state tensor as `<name>.<state>`, each in
        /// its type.
        #[arg(long)]
        out: PathBuf,
        /// A learning-rate schedule spec as JSON (as for `schedule --spec`); PyTorch schedules
        /// without "lr" start from the optimizer's.
        #[arg(long)]
        schedule: Option<String>,
        /// Clip each step's gradients as `clip_grad_norm_` over all tensors of the file does,
        /// to this total norm.
        #[arg(long, allow_negative_numbers = true)]
        clip_grad_norm: Option<f64>,
        /// The norm of --clip-grad-norm: 2 or inf.
        #[arg(long, value_parser = parse_named::<NormType>, requires = "clip_grad_norm")]
        norm_type: Option<NormType>,
        /// Clamp each gradient element to [-V, V], as `clip_grad_value_` does.
        #[arg(
            long,
            value_name = "V",
            conflicts_with = "clip_grad_norm",
            allow_negative_numbers = true
        )]
        clip_grad_value: Option<f64>,
        /// A grad scaler as JSON with torch.amp.GradScaler's argument names, e.g.
        /// '{"init_scale":1024.0,"growth_interval":3}'. The file's gradients are then the
        /// scaled ones: each step unscales them, skips on inf or NaN and updates the scale.
        #[arg(long)]
        grad_scaler: Option<String>,
        /// Resume from this checkpoint (as `--save-checkpoint` or tools/torch_checkpoint.py
        /// writes it): its parameters, optimizer state, hyperparameters, grad scaler and
        /// scheduler state replace the starting point; --params still gives names and shapes.
        #[arg(long, value_name = "CKPT")]
        resume: Option<PathBuf>,
        /// Also save a checkpoint after the last step, parameters included.
        #[arg(long, value_name = "CKPT")]
        save_checkpoint: Option<PathBuf>,
        /// AdamWScheduleFree: switch the parameters to eval mode (the average x, schedulefree's
        /// `eval()`) after the last step, before the checkpoint and the output; without it they
        /// stay in train mode (y).
        #[arg(long)]
        eval: bool,
        /// The wgpu backend to run on (default: the best adapter of any backend).
        #[arg(long)]
        backend: Option<Backend>,
    },
    /// Print the learning rate (and momentum, when cycled) that each optimizer step of a
    /// schedule uses.
    Schedule {
        /// The schedule as JSON with PyTorch's or Keras' class and argument names, e.g.
        /// '{"type":"StepLR","lr":0.1,"step_size":30}'.
        #[arg(long)]
        spec: String,
        /// Number of optimizer steps, at most 1000000 (fewer with many parameter groups: the
        /// trace holds at most 4000000 learning rates).
        #[arg(long, value_parser = parse_steps)]
        steps: usize,
        /// ReduceLROnPlateau's metrics, comma separated: row k is the LR after k calls.
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<f64>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Also draw the learning rate against the step as an SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// List every adapter wgpu finds, with the limits that matter to the kernels and whether
    /// f16 is supported.
    Info {
        /// Only adapters of this backend (default: every backend).
        #[arg(long)]
        backend: Option<Backend>,
    },
    /// Run every optimizer and option combination on an adapter against the f64 CPU reference,
    /// and time each. Exits non-zero when any fails.
    Validate {
        /// The wgpu backend to run on (default: the best adapter of any backend).
        #[arg(long)]
        backend: Option<Backend>,
        /// Use the best adapter whose name contains this (case-insensitive).
        #[arg(long)]
        adapter: Option<String>,
        /// Elements over all tensors (underscores allowed: 1_000_003).
        #[arg(long, default_value_t = validate::DEFAULT_SIZE, value_parser = parse_count)]
        size: u64,
        /// Optimizer steps, for the check and again for the timing (at most 10,000).
        #[arg(long, default_value_t = validate::DEFAULT_STEPS as u64, value_parser = parse_validate_steps)]
        steps: u64,
        /// Seed of the random data (default: from the clock; the table prints it).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Scales the CPU reference's learning rate (not the GPU's), to check that validate
        /// fails: the tests run it with 1.01.
        #[arg(
            long,
            hide = true,
            default_value_t = 1.0,
            allow_negative_numbers = true
        )]
        reference_lr_scale: f64,
    },
    /// Measure every kernel's GB/s against a buffer copy of the same bytes, on the same adapter
    /// in the same run.
    Bench {
        /// The wgpu backend to run on (default: the best adapter of any backend).
        #[arg(long)]
        backend: Option<Backend>,
        /// Use the best adapter whose name contains this (case-insensitive).
        #[arg(long)]
        adapter: Option<String>,
        /// Elements per kernel (underscores allowed).
        #[arg(long, default_value_t = 1 << 22, value_parser = parse_positive)]
        size: u64,
        /// Timed steps per kernel (the median is reported; at least 1).
        #[arg(long, default_value_t = 20, value_parser = parse_positive)]
        iterations: u64,
        /// How kernels access memory: scalar or vec4 (default: vec4).
        #[arg(long, value_parser = parse_named::<Access>)]
        access: Option<Access>,
    },
}

/// Parses one of this crate's named values: a norm type (`2`, `inf`), a state type (`param`,
/// `f32`, `bf16`), an access mode (`scalar`, `vec4`) or an f16 path (`auto`, `packed`,
/// `native`).
fn parse_named<T: std::str::FromStr<Err = Error>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

/// Parses a count such as `1000003` or `1_000_003`.
fn parse_count(text: &str) -> Result<u64, String> {
    text.replace('_', "")
        .parse()
        .map_err(|e| format!("{text:?} is not a count: {e}"))
}

/// Parses a count of at least 1.
fn parse_positive(text: &str) -> Result<u64, String> {
    match parse_count(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// Parses `validate --steps`: at most [`validate::MAX_STEPS`].
fn parse_validate_steps(text: &str) -> Result<u64, String> {
    let steps = parse_count(text)?;
    if steps > validate::MAX_STEPS as u64 {
        return Err(format!(
            "at most {} steps (each runs the f64 reference on the CPU)",
            validate::MAX_STEPS
        ));
    }
    Ok(steps)
}

/// Parses `schedule --steps`: a count up to [`schedule::MAX_TRACE_STEPS`].
fn parse_steps(text: &str) -> Result<usize, String> {
    let steps: usize = text
        .parse()
        .map_err(|e| format!("not a number of steps: {e}"))?;
    if steps > schedule::MAX_TRACE_STEPS {
        return Err(format!(
            "at most {} steps (the trace is kept in memory)",
            schedule::MAX_TRACE_STEPS
        ));
    }
    Ok(steps)
}

/// Writes `text` and a newline to stdout; a closed pipe or a full disk is an error, not a panic.
fn print_stdout(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Io {
            path: "standard output".into(),
            source,
        })
}

/// Output format of `schedule`.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Json,
}

/// A wgpu backend.
#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Vulkan,
    Gl,
    Metal,
    Dx12,
}

impl Backend {
    fn backends(backend: Option<Self>) -> wgpu::Backends {
        match backend {
            None => wgpu::Backends::all(),
            Some(Backend::Vulkan) => wgpu::Backends::VULKAN,
            Some(Backend::Gl) => wgpu::Backends::GL,
            Some(Backend::Metal) => wgpu::Backends::METAL,
            Some(Backend::Dx12) => wgpu::Backends::DX12,
        }
    }
}

fn parse_json(flag: &str, text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::Input(format!("{flag}: {e}")))
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Replay {
            optimizer,
            params,
            grads,
            out,
            schedule,
            clip_grad_norm,
            norm_type,
            clip_grad_value,
            grad_scaler,
            resume,
            save_checkpoint,
            eval,
            state_dtype,
            master_weights,
            stochastic_rounding,
            f16_path,
            backend,
        } => {
            let config: OptimizerConfig = serde_json::from_str(&optimizer)
                .map_err(|e| Error::Input(format!("--optimizer: {e}")))?;
            config.validate()?;
            let clip = match (clip_grad_norm, clip_grad_value) {
                (Some(max_norm), _) => Some(ClipGrad::Norm {
                    max_norm,
                    norm_type: norm_type.unwrap_or_default(),
                }),
                (None, Some(v)) => Some(ClipGrad::value(v)),
                (None, None) => None,
            };
            if let Some(c) = &clip {
                c.validate().map_err(|e| {
                    let flag = match c {
                        ClipGrad::Norm { .. } => "--clip-grad-norm",
                        ClipGrad::Value { .. } => "--clip-grad-value",
                    };
                    Error::Input(format!("{flag}: {e}"))
                })?;
            }
            let grad_scaler = grad_scaler
                .as_deref()
                .map(|s| {
                    let scaler: GradScaler = serde_json::from_str(s)
                        .map_err(|e| Error::Input(format!("--grad-scaler: {e}")))?;
                    scaler
                        .validate()
                        .map_err(|e| Error::Input(format!("--grad-scaler: {e}")))?;
                    Ok::<_, Error>(scaler)
                })
                .transpose()?;
            let schedule = schedule
                .as_deref()
                .map(|s| parse_json("--schedule", s))
                .transpose()?;
            if let Some(spec) = &schedule {
                replay::schedule_for(&config, spec)?;
            }
            let params = replay::read_safetensors(&params)?;
            let grads = replay::read_safetensors(&grads)?;
            if params.iter().all(|p| p.dtype == DType::F32) {
                let flag = if master_weights {
                    Some("--master-weights")
                } else if stochastic_rounding.is_some() {
                    Some("--stochastic-rounding")
                } else {
                    None
                };
                if let Some(flag) = flag {
                    return Err(Error::Input(format!(
                        "{flag}: every parameter in the file is F32, and it applies to 16-bit (F16 or BF16) parameters"
                    )));
                }
            }
            let (ctx, _) = Context::request(Backend::backends(backend), None)?;
            let ctx = ctx
                .with_f16_path(f16_path)
                .map_err(|e| Error::Input(format!("--f16-path: {e}")))?;
            let options = replay::ReplayOptions {
                schedule: schedule.as_ref(),
                clip,
                grad_scaler,
                trace: false,
                resume: resume.as_deref(),
                save_checkpoint: save_checkpoint.as_deref(),
                eval,
                precision: Precision::default()
                    .with_state(state_dtype)
                    .with_master_weights(master_weights)
                    .with_stochastic_rounding(stochastic_rounding),
            };
            let result = replay::replay(&ctx, &config, &options, &params, &grads)?;
            replay::write_output(&out, &result)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule {
            spec,
            steps,
            metrics,
            format,
            plot,
        } => {
            let spec = parse_json("--spec", &spec)?;
            let scheduler = schedule::Scheduler::from_spec(&spec, 0)?;
            let max = scheduler.max_trace_steps();
            if steps > max {
                return Err(Error::Input(format!(
                    "--steps {steps} is too many for {} parameter groups: at most {max} (the \
                     trace holds at most {} learning rates)",
                    scheduler.groups(),
                    schedule::MAX_TRACE_VALUES
                )));
            }
            let trace = scheduler.trace(steps, metrics.as_deref(), None)?;
            if let Some(path) = &plot {
                schedule::plot_trace(&trace, &spec, path)?;
            }
            let text = match format {
                Format::Csv => trace.to_csv(),
                Format::Json => {
                    serde_json::to_string(&trace).map_err(|e| Error::Input(e.to_string()))?
                }
            };
            print_stdout(text.trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            backend,
            adapter,
            size,
            iterations,
            access,
        } => {
            let (ctx, info, _) =
                bench::bench_context(Backend::backends(backend), adapter.as_deref())?;
            let ctx = match access {
                Some(a) => ctx.with_access(a),
                None => ctx,
            };
            let cases = bench::kernel_cases_on(&ctx);
            let rows = bench::measure_rows(&ctx, &cases, &[size], iterations as usize)?;
            let timer = rows
                .first()
                .map(|r| r.kernel.timer.to_string())
                .unwrap_or_default();
            println!(
                "wgpu-optim bench on {} ({:?}); access: {}; timer: {timer}",
                info.name,
                info.backend,
                ctx.access()
            );
            println!("{}", bench::table(&rows).trim_end());
            for (case, row) in cases.iter().zip(&rows) {
                if let Some(line) = bench::products_line(case, row) {
                    println!("{line}");
                }
            }
            for (name, ratio) in bench::time_over_adam(&ctx, size, iterations as usize)? {
                println!("{name}: {ratio:.2}x the time of adam (timed in turn with it)");
            }
            let f16 = bench::f16_paths_over_packed(&ctx, size, iterations as usize)?;
            if f16.is_empty() {
                println!("adam-f16-native: not run, the adapter has no shader-f16");
            }
            for (name, ratio) in f16 {
                println!("{name}: {ratio:.2}x the time of adam-f16-packed (timed in turn with it)");
            }
            let n = bench::GEMM_SIZE;
            let (m, gflops) = bench::measure_gemm(&ctx, n, iterations as usize)?;
            println!(
                "gemm {n} x {n} x {n}: {gflops:.1} GFLOP/s ({:.1} ms, f32, tiled WGSL kernel)",
                m.seconds * 1e3
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { backend } => {
            let adapters = validate::adapters(Backend::backends(backend))?;
            let text: Vec<String> = adapters
                .iter()
                .enumerate()
                .map(|(i, a)| format!("adapter {i}: {}", a.describe()))
                .collect();
            println!("{}", text.join("\n\n"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            backend,
            adapter,
            size,
            steps,
            seed,
            json,
            reference_lr_scale,
        } => {
            let steps = usize::try_from(steps)
                .map_err(|_| Error::Input(format!("--steps {steps} is too large")))?;
            let options = validate::Options {
                reference_lr_scale,
                ..validate::Options::new(
                    size,
                    steps,
                    seed.unwrap_or_else(validate::Rng::clock_seed),
                )
            };
            let (ctx, _) = Context::request(Backend::backends(backend), adapter.as_deref())?;
            // Progress on a terminal only: the run takes a while on CPU adapters.
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = validate::run_with_progress(&ctx, &options, |done, total, row| {
                if tty {
                    eprint!(
                        "\r\x1b[K[{done}/{total}] {} {} {}",
                        row.kernel,
                        row.options,
                        row.status.label()
                    );
                    if done == total {
                        eprintln!();
                    }
                }
            })?;
            if json {
                println!("{}", report.to_json()?);
            } else {
                print!("{}", report.table());
            }
            if report.passed() {
                Ok(ExitCode::SUCCESS)
            } else {
                let (_, failed, _) = report.counts();
                eprintln!(
                    "error: {failed} of {} rows failed validation",
                    report.rows.len()
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message up to its first blank line (some list the arguments they name on
            // the lines below the first), as one line.
            let text = e.to_string();
            let words: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .flat_map(str::split_whitespace)
                .collect();
            let line = if words.is_empty() {
                "invalid arguments".to_string()
            } else {
                words.join(" ")
            };
            eprintln!("{line} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let line = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
