//! Checkpoints: 20 steps in one run are bit for bit the same as 10 steps, a save, a load into a
//! fresh optimizer over fresh buffers, and 10 more; and every bad checkpoint is an error that
//! changes nothing.

mod common;

use common::{POISON, Rng, bits, ctx, write};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use wgpu_optim::checkpoint::{LoadOptions, SaveOptions};
use wgpu_optim::schedule::Scheduler;
use wgpu_optim::{
    ADOPT, ASGD, AdEMAMix, Adafactor, Adagrad, Adam, AdamW, AdamWScheduleFree, BufferRange,
    ClipGrad, Context, GradScaler, Lamb, Lion, Muon, NAdam, NormType, Optimizer, OptimizerConfig,
    ParamGroup, RMSprop, Rprop, SGD, Tensor,
};

const STEPS: usize = 20;
const HALF: usize = 10;

/// Tensors `(buffer, element offset, len, group)`: two batches (one per buffer pair), odd
/// offsets and lengths so that both the vec4 kernel and its edge dispatch run.
const LAYOUT: [(usize, u64, u64, usize); 4] = [
    (0, 1, 37, 0),
    (0, 40, 1029, 0),
    (1, 0, 6, 1),
    (1, 7, 130, 0),
];
const NAMES: [&str; 4] = ["enc.weight", "enc.bias", "head.weight", "head.bias"];
const SHAPE_2D: [usize; 2] = [2, 3];
/// The tensors' shapes for a class that takes matrices only (Muon): tall, wide and square.
const MATRICES: [[usize; 2]; 4] = [[37, 1], [21, 49], SHAPE_2D, [13, 10]];
const BUFFER_LEN: [u64; 2] = [1069, 137];

struct Case {
    name: &'static str,
    groups: [OptimizerConfig; 2],
    schedule: Option<Value>,
    clip: Option<ClipGrad>,
    scaler: Option<GradScaler>,
}

fn cases() -> Vec<Case> {
    let scaler = GradScaler {
        init_scale: 1024.0,
        growth_interval: 3,
        ..Default::default()
    };
    let one_cycle = json!({"type": "OneCycleLR", "max_lr": [0.01, 0.02], "total_steps": STEPS});
    let step_lr = json!({"type": "StepLR", "lr": [0.05, 0.02], "step_size": 3, "gamma": 0.5});
    let adam = Adam {
        lr: 0.01,
        weight_decay: 0.1,
        amsgrad: true,
        ..Default::default()
    };
    let sgd = SGD {
        lr: 0.02,
        momentum: 0.9,
        dampening: 0.3,
        nesterov: false,
        ..Default::default()
    };
    let rmsprop = RMSprop {
        lr: 0.01,
        momentum: 0.8,
        centered: true,
        weight_decay: 0.01,
        ..Default::default()
    };
    let adagrad = Adagrad {
        lr: 0.05,
        lr_decay: 0.01,
        initial_accumulator_value: 0.1,
        ..Default::default()
    };
    let nadam = NAdam {
        lr: 0.01,
        weight_decay: 0.05,
        decoupled_weight_decay: true,
        ..Default::default()
    };
    let asgd = ASGD {
        lr: 0.05,
        lambd: 0.5,
        t0: 3.0,
        ..Default::default()
    };
    let two = |a: OptimizerConfig| {
        let mut b = a;
        b.set_lr(a.lr() * 0.5);
        [a, b]
    };
    vec![
        Case {
            name: "Adam amsgrad, OneCycleLR, clip_grad_norm and a grad scaler",
            groups: two(adam.into()),
            schedule: Some(one_cycle.clone()),
            clip: Some(ClipGrad::Norm {
                max_norm: 1.0,
                norm_type: NormType::L2,
            }),
            scaler: Some(scaler),
        },
        Case {
            name: "AdamW, StepLR",
            groups: two(AdamW::default().into()),
            schedule: Some(step_lr.clone()),
            clip: None,
            scaler: None,
        },
        Case {
            name: "SGD momentum with dampening, OneCycleLR, clip_grad_value",
            groups: two(sgd.into()),
            schedule: Some(one_cycle.clone()),
            clip: Some(ClipGrad::Value { clip_value: 0.5 }),
            scaler: None,
        },
        Case {
            name: "SGD Nesterov, inf-norm clipping and a grad scaler",
            groups: two(SGD {
                nesterov: true,
                dampening: 0.0,
                ..sgd
            }
            .into()),
            schedule: None,
            clip: Some(ClipGrad::Norm {
                max_norm: 0.5,
                norm_type: NormType::Inf,
            }),
            scaler: Some(scaler),
        },
        Case {
            name: "plain SGD, StepLR",
            groups: two(SGD::default().into()),
            schedule: Some(step_lr.clone()),
            clip: None,
            scaler: None,
        },
        Case {
            name: "RMSprop centered with momentum, OneCycleLR and a grad scaler",
            groups: two(rmsprop.into()),
            schedule: Some(one_cycle.clone()),
            clip: None,
            scaler: Some(scaler),
        },
        // NAdam's mu_product and ASGD's eta and mu are scalar state on the GPU; OneCycleLR
        // cycles NAdam's beta1, which mu_product keeps a product of.
        Case {
            name: "NAdam decoupled, OneCycleLR and a grad scaler",
            groups: two(nadam.into()),
            schedule: Some(one_cycle.clone()),
            clip: None,
            scaler: Some(scaler),
        },
        // ADOPT's first step only accumulates exp_avg_sq, and its clip bound and AdEMAMix's
        // warm-up follow the step count; OneCycleLR cycles ADOPT's beta1.
        Case {
            name: "ADOPT coupled weight decay, OneCycleLR and a grad scaler",
            groups: two(ADOPT {
                lr: 0.01,
                weight_decay: 0.1,
                ..Default::default()
            }
            .into()),
            schedule: Some(one_cycle),
            clip: None,
            scaler: Some(scaler),
        },
        Case {
            name: "AdEMAMix warm-up, decoupled weight decay, StepLR, clip_grad_norm",
            groups: two(AdEMAMix {
                lr: 0.01,
                weight_decay: 0.1,
                weight_decouple: true,
                t_alpha_beta3: Some(6.0),
                ..Default::default()
            }
            .into()),
            schedule: Some(step_lr.clone()),
            clip: Some(ClipGrad::Norm {
                max_norm: 1.0,
                norm_type: NormType::L2,
            }),
            scaler: None,
        },
        Case {
            name: "ASGD averaging, StepLR, clip_grad_value",
            groups: two(asgd.into()),
            schedule: Some(step_lr.clone()),
            clip: Some(ClipGrad::value(0.5)),
            scaler: None,
        },
        // Lion's decoupled weight decay divides by the learning rate it was built with, which
        // a checkpoint does not carry (as lion-pytorch's `_init_lr`): the resumed optimizer is
        // built with the same.
        Case {
            name: "Lion decoupled, StepLR",
            groups: two(Lion {
                lr: 0.01,
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                ..Default::default()
            }
            .into()),
            schedule: Some(step_lr.clone()),
            clip: None,
            scaler: None,
        },
        // Lamb's trust ratio comes from per-tensor sums over the tensors split in LAYOUT.
        Case {
            name: "Lamb coupled weight decay, StepLR and a grad scaler",
            groups: two(Lamb {
                lr: 0.01,
                weight_decay: 0.05,
                weight_decouple: false,
                ..Default::default()
            }
            .into()),
            schedule: Some(step_lr.clone()),
            clip: None,
            scaler: Some(scaler),
        },
        // AdamWScheduleFree's lr_max and compensated weight_sum are scalar state; a skipped
        // step keeps them.
        Case {
            name: "AdamWScheduleFree warm-up, StepLR and a grad scaler",
            groups: two(AdamWScheduleFree {
                lr: 0.01,
                warmup_steps: 4,
                weight_decay: 0.01,
                ..Default::default()
            }
            .into()),
            schedule: Some(step_lr.clone()),
            clip: None,
            scaler: Some(scaler),
        },
        // Adafactor keeps head.weight's state as row and column factors, of other lengths than
        // the tensor's.
        Case {
            name: "Adafactor, StepLR, clip_grad_norm and a grad scaler",
            groups: two(Adafactor {
                lr: 0.05,
                weight_decay: 0.01,
                ..Default::default()
            }
            .into()),
            schedule: Some(step_lr.clone()),
            clip: Some(ClipGrad::norm(1.0)),
            scaler: Some(scaler),
        },
        // Muon steps every tensor as a matrix, with its Newton–Schulz products between the two
        // phases of its step.
        Case {
            name: "Muon, OneCycleLR, clip_grad_norm and a grad scaler",
            groups: two(Muon {
                lr: 0.02,
                ..Default::default()
            }
            .into()),
            // OneCycleLR cycles Muon's momentum too.
            schedule: Some(
                json!({"type": "OneCycleLR", "max_lr": [0.02, 0.01], "total_steps": STEPS}),
            ),
            clip: Some(ClipGrad::norm(1.0)),
            scaler: Some(scaler),
        },
        Case {
            name: "Rprop, StepLR",
            groups: two(Rprop::default().into()),
            schedule: Some(step_lr.clone()),
            clip: None,
            scaler: None,
        },
        Case {
            name: "Adagrad, StepLR, clip_grad_norm",
            groups: two(adagrad.into()),
            schedule: Some(step_lr),
            clip: Some(ClipGrad::Norm {
                max_norm: 2.0,
                norm_type: NormType::L2,
            }),
            scaler: None,
        },
    ]
}

/// The parameter and gradient buffers of one run.
struct Model {
    params: [wgpu::Buffer; 2],
    grads: [wgpu::Buffer; 2],
}

impl Model {
    fn new(ctx: &Context, init: &[Vec<f32>; 2]) -> Self {
        let buffer = |label, data: &[f32]| ctx.create_f32_buffer(label, data).unwrap();
        Self {
            params: [buffer("params 0", &init[0]), buffer("params 1", &init[1])],
            grads: [
                buffer("grads 0", &vec![0.0; BUFFER_LEN[0] as usize]),
                buffer("grads 1", &vec![0.0; BUFFER_LEN[1] as usize]),
            ],
        }
    }

    fn optimizer(&self, ctx: &Context, case: &Case) -> Optimizer {
        let mut groups = vec![
            ParamGroup::new(case.groups[0], Vec::new()),
            ParamGroup::new(case.groups[1], Vec::new()),
        ];
        for (k, &(b, at, len, g)) in LAYOUT.iter().enumerate() {
            let mut t = Tensor::new(
                BufferRange::new(&self.params[b], at * 4, len),
                BufferRange::new(&self.grads[b], at * 4, len),
            )
            .named(NAMES[k]);
            if case.groups[g].check_shape(&[len as usize]).is_err() {
                t = t.with_shape(&MATRICES[k]);
            } else if len == 6 {
                t = t.with_shape(&SHAPE_2D);
            }
            groups[g].tensors.push(t);
        }
        let mut opt = Optimizer::with_groups(ctx, &groups).unwrap();
        opt.set_clip_grad(case.clip).unwrap();
        opt.set_grad_scaler(case.scaler).unwrap();
        opt
    }

    fn params(&self, ctx: &Context) -> [Vec<f32>; 2] {
        [
            common::read_all(ctx, &self.params[0]),
            common::read_all(ctx, &self.params[1]),
        ]
    }
}

/// Gradients of every step, per buffer: normal, scaled by the grad scaler's scale when there
/// is one, with an inf in step 3 and a NaN in step 14 that the scaler must skip.
fn gradients(rng: &mut Rng, case: &Case) -> Vec<[Vec<f32>; 2]> {
    let scale = case.scaler.map_or(1.0, |s| s.init_scale as f32);
    (0..STEPS)
        .map(|k| {
            let mut g = [
                rng.normals(BUFFER_LEN[0] as usize),
                rng.normals(BUFFER_LEN[1] as usize),
            ];
            g.iter_mut().flatten().for_each(|v| *v *= scale);
            if case.scaler.is_some() {
                match k {
                    3 => g[0][50] = f32::INFINITY,
                    14 => g[1][9] = f32::NAN,
                    _ => {}
                }
            }
            g
        })
        .collect()
}

fn scheduler(case: &Case) -> Option<Scheduler> {
    case.schedule
        .as_ref()
        .map(|s| Scheduler::from_spec(s, 2).unwrap())
}

/// Runs steps `range`, each followed by a scheduler step unless it is the run's last.
fn run(
    ctx: &Context,
    model: &Model,
    opt: &mut Optimizer,
    sched: &mut Option<Scheduler>,
    grads: &[[Vec<f32>; 2]],
    range: std::ops::Range<usize>,
) {
    for k in range {
        write(&model.grads[0], 0, &grads[k][0]);
        write(&model.grads[1], 0, &grads[k][1]);
        if let Some(s) = sched {
            opt.apply_schedule(s).unwrap();
        }
        opt.step_submit().unwrap();
        if let Some(s) = sched.as_mut().filter(|_| k + 1 < STEPS) {
            s.step().unwrap();
        }
    }
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
}

/// Everything a run ends with, as bits: the tensors' parameters (not the gaps between them,
/// which hold what each run's buffers started with), every state buffer, step counts, the
/// grad scaler's state, the groups and the scheduler's LRs.
fn outcome(ctx: &Context, model: &Model, opt: &Optimizer, sched: &Option<Scheduler>) -> String {
    let all = [bits(ctx, &model.params[0]), bits(ctx, &model.params[1])];
    let mut out = format!(
        "groups {:?}\ntrain mode {}\n",
        opt.groups(),
        opt.is_train_mode()
    );
    for &(b, at, len, _) in &LAYOUT {
        out += &format!("params {:?}\n", &all[b][at as usize..(at + len) as usize]);
    }
    for k in 0..opt.tensor_count() {
        let state = opt.read_state(k).unwrap();
        out += &format!("tensor {k} step {}\n", state.step);
        for (name, x) in &state.scalars {
            out += &format!("  {name} {}\n", x.to_bits());
        }
        for (name, values) in &state.buffers {
            let b: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            out += &format!("  {name} {b:?}\n");
        }
    }
    if opt.grad_scaler().is_some() {
        let s = opt.read_grad_scaler().unwrap();
        out += &format!("scaler {} {}\n", s.scale.to_bits(), s.growth_tracker);
    }
    if let Some(s) = sched {
        out += &format!("lrs {:?}\n", s.lrs());
    }
    out
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// How the interrupted run saves and resumes.
#[derive(Clone, Copy, Debug)]
enum Resume {
    /// `save`, then a fresh optimizer over buffers holding the saved parameters.
    Save,
    /// `save` with the parameters, then a fresh optimizer over poisoned buffers that `load`
    /// fills.
    SaveParameters,
    /// `save_async` with the parameters, the original optimizer stepping on while it runs.
    SaveAsync,
}

fn resume_matches(case: &Case, how: Resume) {
    let ctx = ctx();
    let mut rng = Rng::fresh(case.name);
    let init = [
        rng.normals(BUFFER_LEN[0] as usize),
        rng.normals(BUFFER_LEN[1] as usize),
    ];
    let grads = gradients(&mut rng, case);

    let whole = Model::new(ctx, &init);
    let mut opt = whole.optimizer(ctx, case);
    let mut sched = scheduler(case);
    run(ctx, &whole, &mut opt, &mut sched, &grads, 0..STEPS);
    let want = outcome(ctx, &whole, &opt, &sched);

    let first = Model::new(ctx, &init);
    let mut opt = first.optimizer(ctx, case);
    let mut sched = scheduler(case);
    run(ctx, &first, &mut opt, &mut sched, &grads, 0..HALF);
    let path = temp(&format!(
        "{}-{how:?}.safetensors",
        case.name.replace(' ', "_")
    ));
    let parameters = !matches!(how, Resume::Save);
    let options = SaveOptions {
        scheduler: sched.as_ref(),
        parameters,
    };
    let saved = first.params(ctx);
    match how {
        Resume::Save | Resume::SaveParameters => opt.save(&path, &options).unwrap(),
        Resume::SaveAsync => {
            let pending = opt.save_async(&path, &options).unwrap();
            // Steps after the save began must not reach the file.
            let mut more = sched.clone();
            run(ctx, &first, &mut opt, &mut more, &grads, HALF..HALF + 3);
            pending.wait().unwrap();
        }
    }

    let fresh_init = if parameters {
        [
            vec![POISON; BUFFER_LEN[0] as usize],
            vec![POISON; BUFFER_LEN[1] as usize],
        ]
    } else {
        saved
    };
    let second = Model::new(ctx, &fresh_init);
    let mut opt = second.optimizer(ctx, case);
    let mut sched = scheduler(case);
    opt.load(
        &path,
        LoadOptions {
            scheduler: sched.as_mut(),
            parameters,
        },
    )
    .unwrap();
    run(ctx, &second, &mut opt, &mut sched, &grads, HALF..STEPS);
    let got = outcome(ctx, &second, &opt, &sched);
    assert!(
        want == got,
        "{} ({how:?}): the resumed run differs from the uninterrupted one",
        case.name
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn resumed_runs_are_bit_identical_for_every_optimizer() {
    for case in cases() {
        resume_matches(&case, Resume::Save);
    }
}

#[test]
fn checkpoints_with_parameters_fill_fresh_buffers() {
    for case in cases() {
        resume_matches(&case, Resume::SaveParameters);
    }
}

#[test]
fn async_saves_keep_the_state_they_were_asked_for() {
    for case in cases().iter().take(3) {
        resume_matches(case, Resume::SaveAsync);
    }
}

/// A run of the case whose name starts with `prefix`, over fresh random buffers (from `seed`),
/// after some steps.
struct Started {
    case: Case,
    /// The buffers' initial values.
    init: [Vec<f32>; 2],
    model: Model,
    opt: Optimizer,
    sched: Option<Scheduler>,
}

/// The case whose name starts with `prefix`, over fresh random buffers (from `seed`), after
/// `steps` steps.
fn case_after(prefix: &str, seed: &str, steps: usize) -> Started {
    let ctx = ctx();
    let case = cases()
        .into_iter()
        .find(|c| c.name.starts_with(prefix))
        .unwrap();
    let mut rng = Rng::fresh(seed);
    let init = [
        rng.normals(BUFFER_LEN[0] as usize),
        rng.normals(BUFFER_LEN[1] as usize),
    ];
    let grads = gradients(&mut rng, &case);
    let model = Model::new(ctx, &init);
    let mut opt = model.optimizer(ctx, &case);
    let mut sched = scheduler(&case);
    run(ctx, &model, &mut opt, &mut sched, &grads, 0..steps);
    Started {
        case,
        init,
        model,
        opt,
        sched,
    }
}

/// A checkpoint of 2 Adam steps over the test layout, and the optimizer it came from.
fn adam_checkpoint(path: &Path) -> (Model, Optimizer) {
    let ctx = ctx();
    let mut rng = Rng::fresh("adam checkpoint");
    let case = &cases()[0];
    let init = [
        rng.normals(BUFFER_LEN[0] as usize),
        rng.normals(BUFFER_LEN[1] as usize),
    ];
    let grads = gradients(&mut rng, case);
    let model = Model::new(ctx, &init);
    let mut opt = model.optimizer(ctx, case);
    let mut sched = scheduler(case);
    run(ctx, &model, &mut opt, &mut sched, &grads, 0..2);
    opt.save(
        path,
        &SaveOptions {
            scheduler: sched.as_ref(),
            parameters: true,
        },
    )
    .unwrap();
    (model, opt)
}

/// Rewrites a checkpoint: `edit` gets every tensor `(name, dtype, shape, bytes)` and the
/// metadata.
fn rewrite(
    from: &Path,
    to: &Path,
    edit: impl FnOnce(
        &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
        &mut std::collections::HashMap<String, String>,
    ),
) {
    let bytes = std::fs::read(from).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut metadata);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(to, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

#[test]
fn bad_checkpoints_are_errors_that_change_nothing() {
    let ctx = ctx();
    let good = temp("good.safetensors");
    let (model, mut opt) = adam_checkpoint(&good);
    let bad = temp("bad.safetensors");
    let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    type Edit = Box<
        dyn FnOnce(
            &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
            &mut std::collections::HashMap<String, String>,
        ),
    >;
    let find = |t: &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>, name: &str| {
        t.iter().position(|x| x.0 == name).unwrap()
    };
    let edits: Vec<(&str, &str, Edit)> = vec![
        (
            "a missing state tensor",
            "lacks tensor \"enc.bias.exp_avg_sq\"",
            Box::new(move |t, _| {
                let i = find(t, "enc.bias.exp_avg_sq");
                t.remove(i);
            }),
        ),
        (
            "a missing step",
            "lacks tensor \"head.bias.step\"",
            Box::new(move |t, _| {
                let i = find(t, "head.bias.step");
                t.remove(i);
            }),
        ),
        (
            "a state of the wrong length",
            "has shape [36], expected 37 elements",
            Box::new(move |t, _| {
                let i = find(t, "enc.weight.exp_avg");
                t[i] = (t[i].0.clone(), t[i].1, vec![36], f32s(&[0.5; 36]));
            }),
        ),
        (
            "a state of another shape with the same elements",
            "has shape [3, 2], expected [2, 3]",
            Box::new(move |t, _| {
                let i = find(t, "head.weight.max_exp_avg_sq");
                t[i].2 = vec![3, 2];
            }),
        ),
        (
            "a state in float64",
            "is F64, expected F32",
            Box::new(move |t, _| {
                let i = find(t, "head.bias.exp_avg");
                let v: Vec<f64> = vec![0.25; 130];
                t[i] = (
                    t[i].0.clone(),
                    safetensors::Dtype::F64,
                    vec![130],
                    bytemuck::cast_slice(&v).to_vec(),
                );
            }),
        ),
        (
            "a step as float32",
            "is F32, expected I64",
            Box::new(move |t, _| {
                let i = find(t, "enc.weight.step");
                t[i] = (
                    t[i].0.clone(),
                    safetensors::Dtype::F32,
                    vec![],
                    f32s(&[2.0]),
                );
            }),
        ),
        (
            "a step above what the GPU keeps",
            "steps run from 0 to",
            Box::new(move |t, _| {
                let i = find(t, "enc.bias.step");
                t[i].3 = (1i64 << 33).to_le_bytes().to_vec();
            }),
        ),
        (
            "a tensor of no tensor of the optimizer",
            "belongs to no tensor of this optimizer",
            Box::new(move |t, _| {
                t.push((
                    "dec.weight.exp_avg".into(),
                    safetensors::Dtype::F32,
                    vec![2],
                    f32s(&[1.0, 2.0]),
                ));
            }),
        ),
        (
            "another optimizer type",
            "the checkpoint is of a SGD optimizer, this one is Adam",
            Box::new(|_, m| {
                m.insert("optimizer".into(), "SGD".into());
            }),
        ),
        (
            "another tensor name in a group",
            "tensor \"head.weight\" is not in the checkpoint's group 1",
            Box::new(|_, m| {
                let g = m["param_groups"].replace("\"head.weight\"", "\"tail.weight\"");
                m.insert("param_groups".into(), g);
            }),
        ),
        (
            "amsgrad switched off",
            "keeps other state buffers",
            Box::new(|_, m| {
                let g = m["param_groups"].replace("\"amsgrad\":true", "\"amsgrad\":false");
                m.insert("param_groups".into(), g);
            }),
        ),
        (
            "a hyperparameter PyTorch rejects",
            "Invalid learning rate",
            Box::new(|_, m| {
                let mut g: Value = serde_json::from_str(&m["param_groups"]).unwrap();
                g[1]["lr"] = json!(-1.0);
                m.insert("param_groups".into(), g.to_string());
            }),
        ),
        (
            "one group fewer",
            "the checkpoint has 1 parameter groups, this optimizer 2",
            Box::new(|_, m| {
                let mut g: Vec<Value> = serde_json::from_str(&m["param_groups"]).unwrap();
                g.pop();
                m.insert("param_groups".into(), Value::from(g).to_string());
            }),
        ),
        (
            "no grad scaler state for an optimizer with a grad scaler",
            "holds no grad scaler state",
            Box::new(|_, m| {
                m.remove("grad_scaler");
            }),
        ),
        (
            "a scheduler state of another schedule",
            "scheduler state does not fit",
            Box::new(|_, m| {
                let s = m["scheduler"].replace("OneCycleLR", "StepLR");
                m.insert("scheduler".into(), s);
            }),
        ),
        (
            "no metadata of this format",
            "not a wgpu-optim checkpoint",
            Box::new(|_, m| {
                m.insert("format".into(), "pt".into());
            }),
        ),
    ];
    let before = outcome(ctx, &model, &opt, &None);
    for (what, message, edit) in edits {
        rewrite(&good, &bad, edit);
        let mut sched = scheduler(&cases()[0]);
        let err = opt
            .load(
                &bad,
                LoadOptions {
                    scheduler: sched.as_mut(),
                    parameters: true,
                },
            )
            .expect_err(what)
            .to_string();
        assert!(
            err.contains(message),
            "{what}: the error {err:?} does not say {message:?}"
        );
        assert!(
            outcome(ctx, &model, &opt, &None) == before,
            "{what}: a failed load changed the optimizer"
        );
    }

    // A truncated file, cut inside the data and inside the header.
    let bytes = std::fs::read(&good).unwrap();
    for cut in [bytes.len() - 3, 100, 5] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let err = opt.load(&bad, LoadOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("truncated") || err.to_string().contains("not a valid"),
            "cut at {cut}: {err}"
        );
        assert!(outcome(ctx, &model, &opt, &None) == before);
    }
    // Parameters or a scheduler asked for but not saved.
    let no_extras = temp("no-extras.safetensors");
    opt.save(&no_extras, &SaveOptions::default()).unwrap();
    let err = opt
        .load(
            &no_extras,
            LoadOptions {
                scheduler: None,
                parameters: true,
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("lacks tensor \"enc.weight\""),
        "{err}"
    );
    let mut sched = scheduler(&cases()[0]);
    let err = opt
        .load(
            &no_extras,
            LoadOptions {
                scheduler: sched.as_mut(),
                parameters: false,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("no scheduler state"), "{err}");
    assert!(outcome(ctx, &model, &opt, &None) == before);
    // And the good file loads.
    opt.load(&good, LoadOptions::default()).unwrap();
    for p in [good, bad, no_extras] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn the_file_follows_the_documented_layout() {
    let path = temp("layout.safetensors");
    let (_model, opt) = adam_checkpoint(&path);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let m = meta.metadata().clone().unwrap();
    assert_eq!(m["format"], "wgpu-optim");
    assert_eq!(m["version"], "1");
    assert_eq!(m["optimizer"], "Adam");
    let groups: Vec<Value> = serde_json::from_str(&m["param_groups"]).unwrap();
    assert_eq!(
        groups[0]["params"],
        json!(["enc.weight", "enc.bias", "head.bias"])
    );
    assert_eq!(groups[1]["params"], json!(["head.weight"]));
    let OptimizerConfig::Adam(adam) = opt.groups()[0] else {
        panic!("an Adam group")
    };
    // OneCycleLR cycles beta1; the group holds this step's, as PyTorch's param_groups do.
    assert_ne!(adam.betas.0, 0.9);
    assert_eq!(groups[0]["betas"], json!([adam.betas.0, 0.999]));
    assert_eq!(groups[0]["amsgrad"], json!(true));
    let scaler: Value = serde_json::from_str(&m["grad_scaler"]).unwrap();
    let s = opt.read_grad_scaler().unwrap();
    assert_eq!(scaler["scale"], json!(f64::from(s.scale)));
    assert_eq!(scaler["_growth_tracker"], json!(s.growth_tracker));
    assert_eq!(scaler["growth_interval"], json!(3));
    assert!(m.contains_key("scheduler"));

    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let step = file.tensor("head.weight.step").unwrap();
    assert_eq!(step.dtype(), safetensors::Dtype::I64);
    assert_eq!(step.shape(), &[] as &[usize]);
    assert_eq!(i64::from_le_bytes(step.data().try_into().unwrap()), 2);
    let state = opt.read_state(2).unwrap(); // head.bias: group 0 comes first
    let w = file.tensor("head.weight.exp_avg").unwrap();
    assert_eq!(w.shape(), &SHAPE_2D);
    let v = file.tensor("head.bias.exp_avg_sq").unwrap();
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(v.data());
    assert_eq!(values, state.buffers["exp_avg_sq"]);
    assert_eq!(file.len(), 4 * 5);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn schedule_free_checkpoints_keep_the_mode() {
    let ctx = ctx();
    let Started {
        case,
        init,
        model,
        mut opt,
        sched,
    } = case_after("AdamWScheduleFree", "schedule-free mode", HALF);
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    opt.eval(&mut encoder).unwrap();
    ctx.queue().submit([encoder.finish()]);
    let path = temp("schedule-free-eval.safetensors");
    let save = SaveOptions {
        scheduler: sched.as_ref(),
        parameters: true,
    };
    opt.save(&path, &save).unwrap();
    let want = outcome(ctx, &model, &opt, &sched);
    assert!(want.contains("train mode false"));

    // Loaded, the parameters (x) come with their mode.
    let fresh = Model::new(ctx, &init);
    let mut loaded = fresh.optimizer(ctx, &case);
    let mut fresh_sched = scheduler(&case);
    let load = |opt: &mut Optimizer, sched: &mut Option<Scheduler>, path: &Path| {
        opt.load(
            path,
            LoadOptions {
                scheduler: sched.as_mut(),
                parameters: true,
            },
        )
    };
    load(&mut loaded, &mut fresh_sched, &path).unwrap();
    assert_eq!(outcome(ctx, &fresh, &loaded, &fresh_sched), want);

    // Without its mode, or with another value, a schedule-free checkpoint is refused, and
    // nothing changes.
    let bad = temp("schedule-free-no-mode.safetensors");
    let other = Model::new(ctx, &init);
    let mut refused = other.optimizer(ctx, &case);
    let before = outcome(ctx, &other, &refused, &None);
    for (value, message) in [
        (
            None,
            "does not say whether its parameters were in train or eval mode",
        ),
        (Some("maybe"), "train_mode is \"maybe\""),
    ] {
        rewrite(&path, &bad, |_, meta| match value {
            None => {
                meta.remove("train_mode");
            }
            Some(v) => {
                meta.insert("train_mode".into(), v.into());
            }
        });
        let e = load(&mut refused, &mut None, &bad).unwrap_err();
        assert!(e.to_string().contains(message), "{e}");
        assert_eq!(outcome(ctx, &other, &refused, &None), before);
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn factored_state_is_saved_in_pytorchs_shapes() {
    // Adafactor's head.weight [2, 3] keeps row_var [2, 1] and col_var [1, 3]; its vectors
    // keep variance. A factor of another shape is an error that changes nothing, in a file
    // and through load_state.
    let ctx = ctx();
    let Started {
        model,
        mut opt,
        sched,
        ..
    } = case_after("Adafactor", "factored checkpoint", 2);
    let good = temp("factored.safetensors");
    let save = SaveOptions {
        scheduler: sched.as_ref(),
        parameters: false,
    };
    opt.save(&good, &save).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |name: &str| file.tensor(name).unwrap().shape().to_vec();
    assert_eq!(shape("head.weight.row_var"), [2, 1]);
    assert_eq!(shape("head.weight.col_var"), [1, 3]);
    assert_eq!(shape("enc.weight.variance"), [37]);
    assert!(file.tensor("head.weight.variance").is_err());
    // Tensors are numbered over the groups in order: head.weight is group 1's only one.
    let head = LAYOUT.len() - 1;
    assert_eq!(LAYOUT.iter().filter(|t| t.3 == 1).count(), 1);
    assert_eq!(opt.state_names(head).unwrap(), ["row_var", "col_var"]);

    let before = outcome(ctx, &model, &opt, &sched);
    let bad = temp("factored-bad.safetensors");
    rewrite(&good, &bad, |t, _| {
        let i = t.iter().position(|x| x.0 == "head.weight.row_var").unwrap();
        t[i].2 = vec![1, 2];
    });
    let err = opt.load(&bad, LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("has shape [1, 2], expected [2, 1]"),
        "{err}"
    );
    let mut state = opt.read_state(head).unwrap();
    state.buffers.insert("col_var".into(), vec![0.5; 6]);
    let err = opt.load_state(head, &state).unwrap_err();
    assert!(err.to_string().contains("col_var"), "{err}");
    assert!(outcome(ctx, &model, &opt, &sched) == before);
    opt.load(&good, LoadOptions::default()).unwrap();
    for p in [good, bad] {
        std::fs::remove_file(p).unwrap();
    }
}
