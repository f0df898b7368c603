//! `wgpu-optim`: run the crate's optimizer kernels from the command line.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use wgpu_optim::{Context, Error, OptimizerConfig, replay};

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
        /// The wgpu backend to run on (default: the best adapter of any backend).
        #[arg(long)]
        backend: Option<Backend>,
    },
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

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Replay {
            optimizer,
            params,
            grads,
            out,
            backend,
        } => {
            let config: OptimizerConfig = serde_json::from_str(&optimizer)
                .map_err(|e| Error::Input(format!("--optimizer: {e}")))?;
            config.validate()?;
            let params = replay::read_safetensors(&params)?;
            let grads = replay::read_safetensors(&grads)?;
            let (ctx, _) = Context::request(Backend::backends(backend), None)?;
            let result = replay::replay(&ctx, &config, &params, &grads)?;
            replay::write_safetensors(&out, &result)
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
