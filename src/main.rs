//! `wgpu-optim`: run the crate's optimizer kernels from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use wgpu_optim::{Context, Error, OptimizerConfig, replay, schedule};

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
        /// Initial f32 parameters by name (safetensors).
        #[arg(long)]
        params: PathBuf,
        /// For each parameter name, gradients with a leading step dimension (safetensors).
        #[arg(long)]
        grads: PathBuf,
        /// Output: final parameters by name and each state tensor as `<name>.<state>`.
        #[arg(long)]
        out: PathBuf,
        /// A learning-rate schedule spec as JSON (as for `schedule --spec`); PyTorch schedules
        /// without "lr" start from the optimizer's.
        #[arg(long)]
        schedule: Option<String>,
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
        /// Number of optimizer steps.
        #[arg(long)]
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

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Replay {
            optimizer,
            params,
            grads,
            out,
            schedule,
            backend,
        } => {
            let config: OptimizerConfig = serde_json::from_str(&optimizer)
                .map_err(|e| Error::Input(format!("--optimizer: {e}")))?;
            config.validate()?;
            let schedule = schedule
                .as_deref()
                .map(|s| parse_json("--schedule", s))
                .transpose()?;
            if let Some(spec) = &schedule {
                replay::schedule_for(&config, spec)?;
            }
            let params = replay::read_safetensors(&params)?;
            let grads = replay::read_safetensors(&grads)?;
            let (ctx, _) = Context::request(Backend::backends(backend), None)?;
            let result = replay::replay(&ctx, &config, schedule.as_ref(), &params, &grads)?;
            replay::write_safetensors(&out, &result)
        }
        Command::Schedule {
            spec,
            steps,
            metrics,
            format,
            plot,
        } => {
            let spec = parse_json("--spec", &spec)?;
            let trace = schedule::trace(&spec, steps, metrics.as_deref())?;
            if let Some(path) = &plot {
                schedule::plot_trace(&trace, &spec, path)?;
            }
            let text = match format {
                Format::Csv => trace.to_csv(),
                Format::Json => {
                    serde_json::to_string(&trace).map_err(|e| Error::Input(e.to_string()))?
                }
            };
            println!("{}", text.trim_end());
            Ok(())
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
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{} (see --help)", first.trim_end());
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
