//! The learning-rate schedules (pure host code, no GPU): golden traces recorded from
//! torch.optim.lr_scheduler and keras.optimizers.schedules (tests/golden/schedules, see SPEC.md
//! there), the textbook closed forms, save/resume, and the errors.

use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use wgpu_optim::Error;
use wgpu_optim::schedule::{LrLambda, Scheduler, SchedulerState, Trace};

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/schedules")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {} is missing: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixed closures that SPEC.md names.
fn closures(id: &str) -> Option<LrLambda> {
    let f: LrLambda = match id {
        "pow095" => Arc::new(|e| 0.95f64.powf(e as f64)),
        "inv_step3" => Arc::new(|e| 1.0 / (1 + e / 3) as f64),
        "const095" => Arc::new(|_| 0.95),
        "alt" => Arc::new(|e| if e % 2 == 0 { 0.9 } else { 1.05 }),
        "half_per_cycle" => Arc::new(|x| 1.0 / 2.0f64.powf(x as f64 - 1.0)),
        "decay_iter" => Arc::new(|x| 0.999f64.powf(x as f64)),
        _ => return None,
    };
    Some(f)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

/// Relative error with an absolute floor of 1e-15.
fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-15)
}

/// Compares `got` against `want` row by row; returns the largest relative error and the
/// failures (beyond `tol`).
fn compare(
    case: &str,
    column: &str,
    got: &[Vec<f64>],
    want: &[Vec<f64>],
    tol: f64,
    failures: &mut Vec<String>,
) -> f64 {
    let mut max = 0.0f64;
    if got.len() != want.len() {
        failures.push(format!(
            "{case}: {column}: {} rows, want {}",
            got.len(),
            want.len()
        ));
        return max;
    }
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        if g.len() != w.len() {
            failures.push(format!("{case}: {column} row {k}: {g:?}, want {w:?}"));
            continue;
        }
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            let e = rel_err(a, b);
            max = max.max(e);
            if e.is_nan() || e > tol {
                failures.push(format!(
                    "{case}: {column} row {k} group {i}: {a:e}, want {b:e} (rel {e:.2e})"
                ));
            }
        }
    }
    max
}

#[test]
fn pytorch_golden_traces() {
    let file = golden("pytorch.json");
    let cases = file["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40, "only {} PyTorch cases", cases.len());
    let (mut failures, mut max_lr, mut max_m) = (Vec::new(), 0.0f64, 0.0f64);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let s = match Scheduler::from_spec_with_closures(&case["spec"], 0, &closures) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let metrics = case.get("metrics").map(floats);
        let epochs = case.get("epochs").map(floats);
        let trace = match s.trace(steps, metrics.as_deref(), epochs.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        max_lr = max_lr.max(compare(
            name,
            "lr",
            &trace.lr,
            &rows(&case["lr"]),
            1e-9,
            &mut failures,
        ));
        match (case.get("momentum"), &trace.momentum) {
            (Some(want), Some(got)) => {
                max_m = max_m.max(compare(
                    name,
                    "momentum",
                    got,
                    &rows(want),
                    1e-9,
                    &mut failures,
                ));
            }
            (None, None) => {}
            (want, _) => failures.push(format!(
                "{name}: momentum column {} in the golden file but {} here",
                if want.is_some() { "present" } else { "absent" },
                if trace.momentum.is_some() {
                    "present"
                } else {
                    "absent"
                }
            )),
        }
    }
    eprintln!(
        "PyTorch goldens: {} cases, max relative error lr {max_lr:.3e}, momentum {max_m:.3e}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Keras computes in float32 and this crate in f64, so the two differ by float32 rounding of
/// the terms, which is relative to the schedule's scale, not to the result: where the result
/// is a small difference of large terms (the tail of a cosine, where `1 + cos` cancels), the
/// golden value itself is off from the exact one by up to about 1e-5 relative. So a value must
/// agree within 1e-6 relative to itself or, for such small values, within 1e-6 of the case's
/// peak LR.
#[test]
fn keras_golden_traces() {
    let file = golden("keras.json");
    let cases = file["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "only {} Keras cases", cases.len());
    let (mut failures, mut max_rel, mut max_scaled) = (Vec::new(), 0.0f64, 0.0f64);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let trace = match wgpu_optim::schedule::trace(&case["spec"], steps, None) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert!(trace.momentum.is_none());
        let want = floats(&case["lr"]);
        if trace.lr.len() != want.len() {
            failures.push(format!(
                "{name}: {} rows, want {}",
                trace.lr.len(),
                want.len()
            ));
            continue;
        }
        let peak = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (k, (row, &w)) in trace.lr.iter().zip(&want).enumerate() {
            let got = row[0];
            let rel = rel_err(got, w);
            let scaled = (got - w).abs() / w.abs().max(peak).max(1e-15);
            max_rel = max_rel.max(rel);
            max_scaled = max_scaled.max(scaled);
            if !(rel <= 1e-6 || scaled <= 1e-6) {
                failures.push(format!(
                    "{name}: row {k}: {got:e}, want {w:e} (rel {rel:.2e})"
                ));
            }
        }
    }
    eprintln!(
        "Keras goldens: {} cases, max relative error {max_rel:.3e}, max error relative to the \
         peak LR {max_scaled:.3e}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn lrs0(spec: Value, steps: usize) -> Vec<f64> {
    wgpu_optim::schedule::trace(&spec, steps, None)
        .unwrap()
        .lr
        .into_iter()
        .map(|r| r[0])
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (t, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            rel_err(*a, *b) <= tol,
            "{what}: step {t}: {a:e}, want {b:e}"
        );
    }
}

#[test]
fn textbook_closed_forms() {
    let n = 50;
    let t = |f: &dyn Fn(f64) -> f64| (0..n).map(|t| f(t as f64)).collect::<Vec<_>>();
    assert_close(
        &lrs0(json!({"type":"Fixed","lr":0.05}), n),
        &t(&|_| 0.05),
        0.0,
        "Fixed",
    );
    assert_close(
        &lrs0(json!({"type":"PowerScheduling","lr":0.1,"s":10,"c":2}), n),
        &t(&|t| 0.1 / (1.0 + t / 10.0) / (1.0 + t / 10.0)),
        1e-14,
        "PowerScheduling",
    );
    assert_close(
        &lrs0(json!({"type":"PowerScheduling","lr":0.1,"s":4}), n),
        &t(&|t| 0.1 / (1.0 + t / 4.0)),
        1e-14,
        "PowerScheduling c=1",
    );
    assert_close(
        &lrs0(json!({"type":"TimeBasedDecay","lr":0.1,"decay":0.01}), n),
        &t(&|t| 0.1 / (1.0 + 0.01 * t)),
        1e-14,
        "TimeBasedDecay",
    );
    // Divides by 10 every s steps: exp(−ln 10 · t/s).
    assert_close(
        &lrs0(json!({"type":"ExponentialScheduling","lr":0.1,"s":20}), n),
        &t(&|t| 0.1 * (-(10f64.ln()) * t / 20.0).exp()),
        1e-13,
        "ExponentialScheduling",
    );
    let step_decay = lrs0(json!({"type":"StepDecay","lr":0.1,"drop":0.5,"s":10}), n);
    for (t, lr) in step_decay.iter().enumerate() {
        let halvings = t / 10;
        let mut want = 0.1;
        for _ in 0..halvings {
            want *= 0.5;
        }
        assert_eq!(*lr, want, "StepDecay step {t}");
    }
    // Decaying, never growing.
    assert!(step_decay.windows(2).all(|w| w[1] <= w[0]));
    // Per-group LRs.
    let s = Scheduler::from_spec(
        &json!({"type":"TimeBasedDecay","lr":[0.1,0.2],"decay":1.0}),
        0,
    )
    .unwrap();
    let tr = s.trace(3, None, None).unwrap();
    assert_eq!(
        tr.lr,
        vec![vec![0.1, 0.2], vec![0.05, 0.1], vec![0.1 / 3.0, 0.2 / 3.0]]
    );
}

#[test]
fn linear_warmup_in_front_of_step_and_cosine() {
    let (w, f) = (5usize, 0.1);
    let warm = |t: usize, lr0: f64| lr0 * (f + (1.0 - f) * t as f64 / w as f64);

    // StepLR child: c(j) = 0.1 · 0.5^⌊j/3⌋.
    let got = lrs0(
        json!({"type":"LinearWarmup","warmup_steps":w,"warmup_start_factor":f,
               "schedule":{"type":"StepLR","lr":0.1,"step_size":3,"gamma":0.5}}),
        30,
    );
    let want: Vec<f64> = (0..30)
        .map(|t| {
            if t < w {
                warm(t, 0.1)
            } else {
                0.1 * 0.5f64.powi(((t - w) / 3) as i32)
            }
        })
        .collect();
    assert_close(&got, &want, 1e-15, "LinearWarmup + StepLR");
    assert_eq!(got[0], 0.1 * f);

    // CosineAnnealingLR child: c(j) = η_min + (lr − η_min)(1 + cos(πj/T))/2 within a period
    // (PyTorch's recursion agrees with it to rounding).
    let got = lrs0(
        json!({"type":"LinearWarmup","warmup_steps":w,"warmup_start_factor":f,
               "schedule":{"type":"CosineAnnealingLR","lr":0.1,"T_max":20,"eta_min":0.001}}),
        w + 21,
    );
    let want: Vec<f64> = (0..w + 21)
        .map(|t| {
            if t < w {
                warm(t, 0.1)
            } else {
                let j = (t - w) as f64;
                0.001 + (0.1 - 0.001) * (1.0 + (std::f64::consts::PI * j / 20.0).cos()) / 2.0
            }
        })
        .collect();
    assert_close(&got, &want, 1e-12, "LinearWarmup + CosineAnnealingLR");

    // Default start factor 0; a Keras child; zero warm-up steps is the child itself.
    let got = lrs0(
        json!({"type":"LinearWarmup","warmup_steps":4,
               "schedule":{"type":"ExponentialDecay","initial_learning_rate":0.1,
                           "decay_steps":10,"decay_rate":0.5}}),
        10,
    );
    assert_close(
        &got[..4],
        &[0.0, 0.025, 0.05, 0.075],
        1e-15,
        "warm-up from 0",
    );
    assert_close(
        &got[4..],
        &(0..6)
            .map(|j| 0.1 * 0.5f64.powf(j as f64 / 10.0))
            .collect::<Vec<_>>(),
        1e-15,
        "LinearWarmup + ExponentialDecay",
    );
    let child = json!({"type":"CosineAnnealingLR","lr":0.1,"T_max":7});
    assert_eq!(
        lrs0(
            json!({"type":"LinearWarmup","warmup_steps":0,"schedule":child}),
            12
        ),
        lrs0(child, 12)
    );

    // A OneCycleLR child keeps its momentum column.
    let s = Scheduler::from_spec(
        &json!({"type":"LinearWarmup","warmup_steps":3,
                "schedule":{"type":"OneCycleLR","max_lr":0.1,"total_steps":20}}),
        0,
    )
    .unwrap();
    assert!(s.cycles_momentum());
    assert_eq!(s.momentum(), Some(&[0.95][..]));
}

/// Runs `n` advances (a metric or an epoch for the schedules that take them).
fn advance(s: &mut Scheduler, from: usize, n: usize, input: Option<&[f64]>, epochs: bool) {
    for k in from..from + n {
        match input {
            Some(v) if epochs => s.step_epoch(v[k]).unwrap(),
            Some(v) => s.step_metric(v[k]).unwrap(),
            None => s.step().unwrap(),
        }
    }
}

fn snapshot(s: &Scheduler) -> (Vec<f64>, Option<Vec<f64>>) {
    (s.lrs().to_vec(), s.momentum().map(<[f64]>::to_vec))
}

#[test]
fn save_and_resume_continue_identically() {
    let metrics: Vec<f64> = (0..60)
        .map(|k| 1.0 / (1.0 + k as f64 * 0.1) + if k % 7 == 3 { 0.5 } else { 0.0 })
        .collect();
    let epochs: Vec<f64> = (0..60).map(|k| 0.37 * k as f64 + 0.3).collect();
    let specs: Vec<(Value, Option<&[f64]>, bool)> = vec![
        (
            json!({"type":"CyclicLR","base_lr":[0.01,0.002],"max_lr":[0.1,0.03],"step_size_up":4,
                   "mode":"exp_range","gamma":0.98}),
            None,
            false,
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":3,
                   "scale_fn":"half_per_cycle"}),
            None,
            false,
        ),
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":60,"three_phase":true}),
            None,
            false,
        ),
        (
            json!({"type":"ReduceLROnPlateau","lr":0.1,"factor":0.5,"patience":1,"cooldown":2}),
            Some(&metrics),
            false,
        ),
        (
            json!({"type":"SequentialLR","lr":0.1,"milestones":[5, 20],"schedulers":[
                {"type":"LinearLR","start_factor":0.1,"total_iters":5},
                {"type":"CosineAnnealingLR","T_max":10},
                {"type":"ExponentialLR","gamma":0.9}]}),
            None,
            false,
        ),
        (
            json!({"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":3,"T_mult":2}),
            None,
            false,
        ),
        (
            json!({"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":3,"T_mult":2}),
            Some(&epochs),
            true,
        ),
        (
            json!({"type":"ChainedScheduler","lr":0.1,"schedulers":[
                {"type":"MultiplicativeLR","lr_lambda":"alt"},
                {"type":"StepLR","step_size":4,"gamma":0.5}]}),
            None,
            false,
        ),
        (
            json!({"type":"LinearWarmup","warmup_steps":5,"schedule":
                {"type":"CosineDecayRestarts","initial_learning_rate":0.1,"first_decay_steps":7}}),
            None,
            false,
        ),
    ];
    for (spec, input, by_epoch) in specs {
        for k in [0, 1, 7, 23] {
            let build = || Scheduler::from_spec_with_closures(&spec, 0, &closures).unwrap();
            let total = 50;
            let mut straight = build();
            let mut want = vec![snapshot(&straight)];
            for j in 0..total {
                advance(&mut straight, j, 1, input, by_epoch);
                want.push(snapshot(&straight));
            }

            let mut first = build();
            advance(&mut first, 0, k, input, by_epoch);
            let saved = serde_json::to_string(&first.state()).unwrap();
            drop(first);
            let state: SchedulerState = serde_json::from_str(&saved).unwrap();
            let mut resumed = build();
            resumed.load_state(&state).unwrap();
            let mut got = vec![snapshot(&resumed)];
            for j in k..total {
                advance(&mut resumed, j, 1, input, by_epoch);
                got.push(snapshot(&resumed));
            }
            assert_eq!(got, want[k..], "{spec} resumed after {k} steps");
        }
    }
}

#[test]
fn load_state_checks_the_structure() {
    let a = Scheduler::from_spec(&json!({"type":"StepLR","lr":0.1,"step_size":2}), 0).unwrap();
    let mut b =
        Scheduler::from_spec(&json!({"type":"ExponentialLR","lr":0.1,"gamma":0.9}), 0).unwrap();
    assert!(matches!(b.load_state(&a.state()), Err(Error::Input(_))));
    let mut c =
        Scheduler::from_spec(&json!({"type":"StepLR","lr":[0.1, 0.2],"step_size":2}), 0).unwrap();
    assert!(matches!(c.load_state(&a.state()), Err(Error::Input(_))));
    assert_eq!(c.lrs(), [0.1, 0.2]);
}

fn err(spec: Value) -> Error {
    match Scheduler::from_spec_with_closures(&spec, 0, &closures) {
        Ok(s) => panic!("{spec} built: {s:?}"),
        Err(e) => e,
    }
}

fn hyper(spec: Value, message: &str) {
    match err(spec.clone()) {
        Error::InvalidHyperparameter(m) => assert_eq!(m, message, "{spec}"),
        other => panic!("{spec}: {other:?}"),
    }
}

fn input(spec: Value, contains: &str) {
    match err(spec.clone()) {
        Error::Input(m) => assert!(m.contains(contains), "{spec}: {m}"),
        other => panic!("{spec}: {other:?}"),
    }
}

#[test]
fn invalid_specs() {
    input(
        json!({"type":"NoSuchLR","lr":0.1}),
        "unknown schedule type \"NoSuchLR\"",
    );
    input(json!({"lr":0.1}), "missing \"type\"");
    input(json!([1, 2]), "must be a JSON object");
    input(
        json!({"type":"StepLR","lr":0.1}),
        "StepLR: missing argument step_size",
    );
    input(
        json!({"type":"StepLR","step_size":3}),
        "StepLR: missing argument lr",
    );
    input(
        json!({"type":"StepLR","lr":0.1,"step_size":3,"gama":0.5}),
        "StepLR: unknown argument gama",
    );
    input(
        json!({"type":"StepLR","lr":0.1,"step_size":"three"}),
        "argument step_size must be an integer",
    );
    input(
        json!({"type":"ExponentialDecay","initial_learning_rate":0.1,"decay_rate":0.5}),
        "ExponentialDecay: missing argument decay_steps",
    );
    hyper(
        json!({"type":"ConstantLR","lr":0.1,"factor":1.5}),
        "Constant multiplicative factor expected to be between 0 and 1.",
    );
    hyper(
        json!({"type":"LinearLR","lr":0.1,"start_factor":0.0}),
        "Starting multiplicative factor expected to be greater than 0 and less or equal to 1.",
    );
    hyper(
        json!({"type":"LinearLR","lr":0.1,"end_factor":1.5}),
        "Ending multiplicative factor expected to be between 0 and 1.",
    );
    hyper(
        json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"pct_start":1.5}),
        "Expected float between 0 and 1 pct_start, but got 1.5",
    );
    hyper(
        json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"anneal_strategy":"exp"}),
        "anneal_strategy must be one of 'cos' or 'linear', instead got exp",
    );
    hyper(
        json!({"type":"OneCycleLR","max_lr":0.1}),
        "You must define either total_steps OR (epochs AND steps_per_epoch)",
    );
    hyper(
        json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":0}),
        "Expected positive integer total_steps, but got 0",
    );
    hyper(
        json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"mode":"sawtooth"}),
        "mode is invalid and scale_fn is None",
    );
    hyper(
        json!({"type":"CyclicLR","base_lr":[0.01, 0.02],"max_lr":[0.1, 0.2, 0.3]}),
        "max_lr must have the same length as optimizer.param_groups. max_lr has 3 values, \
         param_groups has 2.",
    );
    hyper(
        json!({"type":"ReduceLROnPlateau","lr":0.1,"factor":1.0}),
        "Factor should be < 1.0.",
    );
    hyper(
        json!({"type":"ReduceLROnPlateau","lr":0.1,"mode":"average"}),
        "mode average is unknown!",
    );
    hyper(
        json!({"type":"ReduceLROnPlateau","lr":0.1,"threshold_mode":"pct"}),
        "threshold mode pct is unknown!",
    );
    hyper(
        json!({"type":"ReduceLROnPlateau","lr":[0.1, 0.2],"min_lr":[0.0, 0.0, 0.0]}),
        "expected 2 min_lrs, got 3",
    );
    hyper(
        json!({"type":"SequentialLR","lr":0.1,"milestones":[3, 6],"schedulers":[
            {"type":"ConstantLR"},{"type":"ExponentialLR","gamma":0.9}]}),
        "Sequential Schedulers expects number of schedulers provided to be one more than the \
         number of milestone points, but got number of schedulers 2 and the number of \
         milestones to be equal to 2",
    );
    hyper(
        json!({"type":"SequentialLR","lr":0.1,"milestones":[],"schedulers":[]}),
        "SequentialLR expects at least one scheduler, but got no scheduler.",
    );
    hyper(
        json!({"type":"ChainedScheduler","lr":0.1,"schedulers":[
            {"type":"ReduceLROnPlateau"}]}),
        "ChainedScheduler does not support `ReduceLROnPlateau` scheduler as it requires \
         additional kwargs to be specified when calling `step`, but got one at index 0 in the \
         given schedulers sequence.",
    );
    input(
        json!({"type":"SequentialLR","lr":0.1,"milestones":[3],"schedulers":[
            {"type":"ConstantLR","lr":0.2},{"type":"ExponentialLR","gamma":0.9}]}),
        "must not give \"lr\"",
    );
    hyper(
        json!({"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":0}),
        "Expected positive integer T_0, but got 0",
    );
    hyper(
        json!({"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":2.5}),
        "Expected positive integer T_0, but got 2.5",
    );
    hyper(
        json!({"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":5,"T_mult":0}),
        "Expected integer T_mult >= 1, but got 0",
    );
    hyper(
        json!({"type":"StepLR","lr":-0.1,"step_size":3}),
        "Invalid learning rate: -0.1",
    );
    hyper(
        json!({"type":"ExponentialLR","lr":[0.1, -1.0],"gamma":0.9}),
        "Invalid learning rate: -1.0",
    );
    hyper(
        json!({"type":"LambdaLR","lr":[0.1, 0.2],"lr_lambda":["pow095"]}),
        "Expected 2 lr_lambdas, but got 1",
    );
    hyper(
        json!({"type":"ExponentialDecay","initial_learning_rate":0.1,"decay_steps":0,
               "decay_rate":0.5}),
        "Argument `decay_steps` must be > 0. Received: decay_steps=0",
    );
    hyper(
        json!({"type":"PiecewiseConstantDecay","boundaries":[10, 20],"values":[0.1, 0.01]}),
        "The length of boundaries should be 1 less than the length of values. Received: \
         boundaries=[10, 20] of length 2, and values=[0.1, 0.01] of length 2.",
    );
    input(
        json!({"type":"LambdaLR","lr":0.1,"lr_lambda":"nope"}),
        "no closure named \"nope\"",
    );

    // Closures cannot come from plain JSON.
    for (spec, msg) in [
        (
            json!({"type":"LambdaLR","lr":0.1,"lr_lambda":"pow095"}),
            "LambdaLR needs a Rust closure for lr_lambda; it cannot come from JSON",
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"scale_fn":"decay_iter"}),
            "CyclicLR needs a Rust closure for scale_fn; it cannot come from JSON",
        ),
    ] {
        match Scheduler::from_spec(&spec, 0) {
            Err(Error::Input(m)) => assert_eq!(m, msg),
            other => panic!("{spec}: {other:?}"),
        }
    }
    assert!(matches!(
        Scheduler::from_json("{not json"),
        Err(Error::Input(_))
    ));
}

#[test]
fn one_cycle_errors_when_stepped_past_total_steps() {
    let mut s =
        Scheduler::from_json(r#"{"type":"OneCycleLR","max_lr":0.1,"total_steps":10}"#).unwrap();
    for _ in 0..10 {
        s.step().unwrap();
    }
    let before = snapshot(&s);
    match s.step() {
        Err(Error::Input(m)) => assert_eq!(
            m,
            "Tried to step 11 times. The specified number of total steps is 10"
        ),
        other => panic!("{other:?}"),
    }
    // Nothing changed: it fails again the same way.
    assert_eq!(snapshot(&s), before);
    assert!(s.step().is_err());
}

#[test]
fn wrong_step_kind_is_an_error() {
    let mut plateau = Scheduler::from_json(r#"{"type":"ReduceLROnPlateau","lr":0.1}"#).unwrap();
    assert!(plateau.needs_metric());
    assert!(matches!(plateau.step(), Err(Error::Input(_))));
    assert!(matches!(plateau.step_epoch(1.0), Err(Error::Input(_))));
    plateau.step_metric(1.0).unwrap();

    let mut step = Scheduler::from_json(r#"{"type":"StepLR","lr":0.1,"step_size":2}"#).unwrap();
    assert!(matches!(step.step_metric(1.0), Err(Error::Input(_))));
    // PyTorch's closed form for a whole epoch; fractions only for warm restarts.
    step.step_epoch(5.0).unwrap();
    assert!((step.lrs()[0] - 0.1 * 0.01).abs() < 1e-18);
    assert!(matches!(step.step_epoch(5.5), Err(Error::Input(_))));
    let mut seq = Scheduler::from_json(
        r#"{"type":"SequentialLR","lr":0.1,"milestones":[2],
            "schedulers":[{"type":"ConstantLR"},{"type":"ExponentialLR","gamma":0.9}]}"#,
    )
    .unwrap();
    assert!(matches!(seq.step_epoch(3.0), Err(Error::Input(_))));

    let mut warm =
        Scheduler::from_json(r#"{"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":4}"#).unwrap();
    warm.step_epoch(2.0).unwrap();
    assert!((warm.lrs()[0] - 0.05).abs() < 1e-15);
    assert!(warm.step_epoch(-1.0).is_err());
    assert!((warm.lrs()[0] - 0.05).abs() < 1e-15);
}

#[test]
fn groups_and_accessors() {
    // A scalar LR broadcast to three groups, as an optimizer whose groups share it.
    let s = Scheduler::from_spec(&json!({"type":"StepLR","lr":0.1,"step_size":2}), 3).unwrap();
    assert_eq!(s.groups(), 3);
    assert_eq!(s.lrs(), [0.1, 0.1, 0.1]);
    assert!(!s.cycles_momentum());
    assert_eq!(s.momentum(), None);
    assert_eq!(s.schedule(), "StepLR");
    assert!(wgpu_optim::schedule::uses_optimizer_lr("StepLR"));
    assert!(!wgpu_optim::schedule::uses_optimizer_lr("OneCycleLR"));
    assert!(!wgpu_optim::schedule::uses_optimizer_lr("CosineDecay"));
    assert!(wgpu_optim::schedule::types().any(|t| t == "LinearWarmup"));
    // A list must match the number asked for.
    assert!(matches!(
        Scheduler::from_spec(&json!({"type":"StepLR","lr":[0.1, 0.2],"step_size":2}), 3),
        Err(Error::Input(_))
    ));
    let k = Scheduler::from_spec(
        &json!({"type":"CosineDecay","initial_learning_rate":0.1,"decay_steps":10}),
        2,
    )
    .unwrap();
    assert_eq!(k.lrs(), [0.1, 0.1]);

    // CyclicLR takes its groups from its lists.
    let c = Scheduler::from_json(
        r#"{"type":"CyclicLR","base_lr":[0.01, 0.02],"max_lr":0.1,"step_size_up":2}"#,
    )
    .unwrap();
    assert_eq!(c.groups(), 2);
    assert_eq!(c.momentum(), Some(&[0.9, 0.9][..]));

    // Typed constructors for closures.
    let mut l = Scheduler::lambda_lr(&[0.1, 0.2], Arc::new(|e| 1.0 / (1.0 + e as f64))).unwrap();
    l.step().unwrap();
    assert_eq!(l.lrs(), [0.05, 0.1]);
    let mut m = Scheduler::multiplicative_lr(&[0.1], Arc::new(|_| 0.5)).unwrap();
    m.step().unwrap();
    m.step().unwrap();
    assert_eq!(m.lrs(), [0.025]);

    // The trace helper and its JSON form.
    let t: Trace = wgpu_optim::schedule::trace(
        &json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":5}),
        3,
        None,
    )
    .unwrap();
    assert_eq!(t.lr.len(), 3);
    assert_eq!(t.momentum.as_ref().map(Vec::len), Some(3));
    let back: Trace = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
    assert!(
        wgpu_optim::schedule::trace(&json!({"type":"ReduceLROnPlateau","lr":0.1}), 3, None)
            .is_err()
    );
}

/// Every argument that PyTorch (or Keras, or the textbook formula) would divide by zero with,
/// at construction or at some later step, is rejected when the schedule is built, with a message
/// that names it.
#[test]
fn zero_divisors_are_rejected_when_built_naming_the_argument() {
    for (spec, message) in [
        (
            json!({"type":"StepLR","lr":0.1,"step_size":0}),
            "StepLR: step_size must not be 0: the epoch is taken modulo step_size (integer \
             modulo by zero)",
        ),
        (
            json!({"type":"CosineAnnealingLR","lr":0.1,"T_max":0}),
            "CosineAnnealingLR: T_max must not be 0: the epoch is taken modulo 2 * T_max and \
             divided by T_max (integer modulo by zero)",
        ),
        (
            json!({"type":"CosineAnnealingLR","lr":0.1,"T_max":0.0,"eta_min":0.01}),
            "CosineAnnealingLR: T_max must not be 0: the epoch is taken modulo 2 * T_max and \
             divided by T_max (integer modulo by zero)",
        ),
        (
            json!({"type":"LinearLR","lr":0.1,"total_iters":0}),
            "LinearLR: total_iters must not be 0: the closed form (at a SequentialLR milestone, \
             or step(epoch)) divides by total_iters (float division by zero)",
        ),
        (
            json!({"type":"PolynomialLR","lr":0.1,"total_iters":0}),
            "PolynomialLR: total_iters must not be 0: the closed form (at a SequentialLR \
             milestone, or step(epoch)) divides by total_iters (division by zero)",
        ),
        (
            json!({"type":"PolynomialLR","lr":0.1,"total_iters":4,"power":-0.5}),
            "PolynomialLR: power must not be negative, got -0.5: the decay factor at epoch \
             total_iters is 0.0 ** power (0.0 cannot be raised to a negative power)",
        ),
        (
            json!({"type":"ConstantLR","lr":0.1,"factor":0.0,"total_iters":3}),
            "ConstantLR: factor must not be 0 when total_iters > 0: the LR is divided by factor \
             at epoch total_iters (float division by zero)",
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":0}),
            "CyclicLR: step_size_up + step_size_down must not be 0, got 0.0 + 0.0: the cycle's \
             length divides the step (float division by zero)",
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":5,
                   "step_size_down":-5}),
            "CyclicLR: step_size_up + step_size_down must not be 0, got 5.0 + -5.0: the cycle's \
             length divides the step (float division by zero)",
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":0,
                   "step_size_down":5}),
            "CyclicLR: step_size_up must not be 0: the LR rises over step_size_up / \
             (step_size_up + step_size_down) of the cycle, which divides the position in the \
             cycle (float division by zero)",
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":1e-300,
                   "step_size_down":1e300}),
            "CyclicLR: step_size_up 1e-300 is too small against step_size_down 1e+300: \
             step_size_up / (step_size_up + step_size_down) rounds to 0, which divides the \
             position in the cycle (float division by zero)",
        ),
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"div_factor":0}),
            "OneCycleLR: div_factor must not be 0: the initial LR is max_lr / div_factor (float \
             division by zero)",
        ),
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"final_div_factor":0.0}),
            "OneCycleLR: final_div_factor must not be 0: the minimum LR is initial_lr / \
             final_div_factor (float division by zero)",
        ),
        // Phase 1 ends at 1.0·10 − 1 = 9, where phase 2 ends too: PyTorch divides by zero at
        // step 10, the last that it allows.
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"pct_start":1.0}),
            "OneCycleLR: pct_start 1.0 with total_steps 10 leaves phase 2 of 2 with no length \
             (it starts and ends at step 9.0): the LR is interpolated over that length (float \
             division by zero)",
        ),
        // 0.1·10 − 1 = 0: PyTorch divides by zero when it is built.
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"pct_start":0.1,
                   "three_phase":true}),
            "OneCycleLR: pct_start 0.1 with total_steps 10 leaves phase 1 of 3 with no length \
             (it starts and ends at step 0.0): the LR is interpolated over that length (float \
             division by zero)",
        ),
        // Phase 2 ends at 2·0.55·10 − 2 = 9 = total_steps − 1, where phase 3 ends.
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"epochs":2,"steps_per_epoch":5,
                   "pct_start":0.55,"three_phase":true}),
            "OneCycleLR: pct_start 0.55 with total_steps 10 leaves phase 3 of 3 with no length \
             (it starts and ends at step 9.0): the LR is interpolated over that length (float \
             division by zero)",
        ),
        (
            json!({"type":"InverseTimeDecay","initial_learning_rate":0.1,"decay_steps":10,
                   "decay_rate":-0.5}),
            "InverseTimeDecay: decay_rate must be >= 0, got -0.5: the LR is \
             initial_learning_rate / (1 + decay_rate * step / decay_steps), whose divisor \
             reaches 0 (division by zero)",
        ),
        (
            json!({"type":"PolynomialDecay","initial_learning_rate":0.1,"decay_steps":10,
                   "power":-1}),
            "PolynomialDecay: power must be >= 0, got -1: at step decay_steps the LR takes 0 to \
             the power (division by zero)",
        ),
        (
            json!({"type":"PowerScheduling","lr":0.1,"s":10,"c":-2}),
            "PowerScheduling: c must be >= 0, got -2.0: the LR is lr / (1 + t/s)^c, whose \
             divisor reaches 0 for a negative c (division by zero)",
        ),
        // Inside composites and warm-ups too, where the division may come at a milestone.
        (
            json!({"type":"SequentialLR","lr":0.1,"milestones":[2],"schedulers":[
                {"type":"ExponentialLR","gamma":0.9},{"type":"LinearLR","total_iters":0}]}),
            "LinearLR: total_iters must not be 0: the closed form (at a SequentialLR milestone, \
             or step(epoch)) divides by total_iters (float division by zero)",
        ),
        (
            json!({"type":"ChainedScheduler","lr":0.1,"schedulers":[
                {"type":"ExponentialLR","gamma":0.9},{"type":"StepLR","step_size":0}]}),
            "StepLR: step_size must not be 0: the epoch is taken modulo step_size (integer \
             modulo by zero)",
        ),
        (
            json!({"type":"LinearWarmup","warmup_steps":3,"schedule":
                {"type":"CosineAnnealingLR","lr":0.1,"T_max":0}}),
            "CosineAnnealingLR: T_max must not be 0: the epoch is taken modulo 2 * T_max and \
             divided by T_max (integer modulo by zero)",
        ),
    ] {
        hyper(spec, message);
    }
    // Arguments that PyTorch checks itself keep PyTorch's message.
    hyper(
        json!({"type":"OneCycleLR","max_lr":0.1,"epochs":0,"steps_per_epoch":5}),
        "Expected positive integer epochs, but got 0",
    );
    hyper(
        json!({"type":"OneCycleLR","max_lr":0.1,"epochs":3,"steps_per_epoch":0}),
        "Expected positive integer steps_per_epoch, but got 0",
    );
    input(
        json!({"type":"OneCycleLR","max_lr":0.1,"epochs":4294967296_i64,
               "steps_per_epoch":4294967296_i64}),
        "OneCycleLR: epochs * steps_per_epoch is too large (at most 9007199254740992)",
    );
    input(
        json!({"type":"CosineAnnealingWarmRestarts","lr":0.1,"T_0":2,"T_mult":2097152}),
        "CosineAnnealingWarmRestarts: T_mult is too large, got 2097152 (at most 1048576)",
    );
}

/// Values next to the rejected ones that PyTorch steps through without dividing by zero still
/// build, and give PyTorch's numbers (recorded from torch 2.15).
#[test]
fn divisors_pytorch_accepts_still_work() {
    for (spec, want) in [
        (
            json!({"type":"StepLR","lr":0.1,"step_size":-1,"gamma":0.5}),
            vec![0.1, 0.05, 0.025, 0.0125],
        ),
        (
            json!({"type":"CosineAnnealingLR","lr":0.1,"T_max":-3}),
            vec![
                0.1,
                0.07500000000000001,
                0.025000000000000015,
                0.0,
                0.024999999999999994,
                0.07500000000000005,
                0.10000000000000006,
                0.07500000000000007,
            ],
        ),
        // factor 0 is never divided by when total_iters is 0.
        (
            json!({"type":"ConstantLR","lr":0.1,"factor":0.0,"total_iters":0}),
            vec![0.0; 4],
        ),
        (
            json!({"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":5,
                   "step_size_down":0,"cycle_momentum":false}),
            vec![
                0.01,
                0.027999999999999997,
                0.046,
                0.06400000000000002,
                0.082,
                0.01,
                0.028000000000000018,
            ],
        ),
        (
            json!({"type":"LinearLR","lr":0.1,"total_iters":-1}),
            vec![0.03333333333333333; 3],
        ),
        (
            json!({"type":"PolynomialLR","lr":0.1,"total_iters":-2}),
            vec![0.1; 3],
        ),
        // pct_start 0: phase 1 runs from step 0 to step −1, a length of −1, not 0.
        (
            json!({"type":"OneCycleLR","max_lr":0.1,"total_steps":5,"pct_start":0.0,
                   "cycle_momentum":false}),
            vec![
                0.0904508879153485,
                0.0654509879153485,
                0.03454941208465151,
                0.009549512084651508,
                4e-07,
            ],
        ),
    ] {
        let what = spec.to_string();
        assert_close(&lrs0(spec, want.len()), &want, 1e-12, &what);
    }
}

/// CosineAnnealingLR takes a fractional T_max, as PyTorch does; for T_max 2/3, PyTorch's
/// recursive form divides by 1 + cos(π·2/(2/3)) = 0 at step 3. The error names T_max there and
/// leaves the scheduler as it was.
#[test]
fn fractional_t_max_fails_at_the_step_pytorch_fails_naming_t_max() {
    let spec = json!({"type":"CosineAnnealingLR","lr":0.1,"T_max":2.0 / 3.0});
    let mut s = Scheduler::from_spec(&spec, 0).unwrap();
    s.step().unwrap();
    s.step().unwrap();
    // torch 2.15: [0.1, 0.04999999999999999, 0.0], then ZeroDivisionError.
    assert!(s.lrs()[0].abs() < 1e-18, "{:?}", s.lrs());
    match s.step() {
        Err(Error::Input(m)) => assert_eq!(
            m,
            "CosineAnnealingLR: float division by zero at epoch 3: 1 + cos(pi * 2 / T_max) is 0 \
             for T_max 0.6666666666666666"
        ),
        other => panic!("{other:?}"),
    }
    assert!(s.lrs()[0].abs() < 1e-18);
}

/// `groups` and `steps` are sizes that the caller controls: too large is an error, not a
/// capacity overflow or an allocation failure.
#[test]
fn huge_group_and_step_counts_are_errors() {
    let spec = json!({"type":"StepLR","lr":0.1,"step_size":2});
    for groups in [usize::MAX, (1 << 16) + 1] {
        match Scheduler::from_spec(&spec, groups) {
            Err(Error::Input(m)) => assert_eq!(
                m,
                format!("groups: {groups} parameter groups asked for, at most 65536 are supported")
            ),
            other => panic!("{groups}: {other:?}"),
        }
    }
    let keras = json!({"type":"CosineDecay","initial_learning_rate":0.1,"decay_steps":10});
    assert!(matches!(
        Scheduler::from_spec(&keras, usize::MAX),
        Err(Error::Input(_))
    ));
    let s = Scheduler::from_spec(&spec, 1 << 16).unwrap();
    assert_eq!(s.groups(), 65536);

    let one = Scheduler::from_spec(&spec, 0).unwrap();
    assert_eq!(one.max_trace_steps(), 1_000_000);
    for steps in [1_000_001, 1_000_000_000_000, usize::MAX] {
        match one.trace(steps, None, None) {
            Err(Error::Input(m)) => assert_eq!(
                m,
                format!(
                    "steps: a trace of {steps} steps is too long: at most 1000000 for 1 \
                     parameter group (the trace is kept in memory)"
                )
            ),
            other => panic!("{steps}: {other:?}"),
        }
    }
    assert!(matches!(
        wgpu_optim::schedule::trace(&spec, usize::MAX, None),
        Err(Error::Input(_))
    ));
    // 100 groups: 4,000,000 / 100 = 40,000 steps at most.
    let many = Scheduler::from_spec(&spec, 100).unwrap();
    assert_eq!(many.max_trace_steps(), 40_000);
    assert!(matches!(
        many.trace(40_001, None, None),
        Err(Error::Input(m)) if m.contains("at most 40000 for 100 parameter groups")
    ));
    let t = many.trace(40_000, None, None).unwrap();
    assert_eq!(t.lr.len(), 40_000);
    // StepLR(step_size=2, gamma=0.1): 0.1·0.1^⌊k/2⌋.
    assert_eq!(t.lr[3], vec![0.1 * 0.1; 100]);
}

/// A `Trace` is plain data that a caller may put together by hand: ragged rows are written as
/// they are, never indexed past their end.
#[test]
fn ragged_traces_print_and_plot_without_panicking() {
    let t = Trace {
        lr: vec![vec![0.5, 0.25], vec![0.125]],
        momentum: Some(vec![vec![0.9, 0.8]]),
    };
    assert_eq!(
        t.to_csv(),
        "step,lr_0,lr_1,momentum_0,momentum_1\n0,0.5,0.25,0.9,0.8\n1,0.125\n"
    );
    assert!(t.svg("ragged").unwrap().starts_with("<svg"));
    let empty = Trace {
        lr: vec![vec![]],
        momentum: None,
    };
    // No groups in row 0: no LR columns.
    assert_eq!(empty.to_csv(), "step\n0\n");
    assert!(empty.svg("empty").unwrap().starts_with("<svg"));
}

/// Runs `f` on another thread and fails when it takes longer than a minute (plotters loops
/// without end on an axis whose width or ratio of ends is not finite).
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{what}: no result within a minute ({e})"))
}

/// Learning rates anywhere in the f64 range plot: the axes stay finite, and values beyond what
/// plotters can draw sit at the edge.
#[test]
fn extreme_learning_rates_plot() {
    for (what, values) in [
        ("both signs near f64::MAX", vec![-1e308, 1e308]),
        ("equal near f64::MAX", vec![1.7e308, 1.7e308]),
        ("equal and tiny", vec![5e-324, 5e-324]),
        (
            "with infinities",
            vec![f64::INFINITY, 1.0, f64::NEG_INFINITY, f64::NAN],
        ),
    ] {
        let t = Trace {
            lr: values.iter().map(|v| vec![*v]).collect(),
            momentum: None,
        };
        let svg = within_a_minute(what, move || t.svg("extreme"));
        assert!(svg.unwrap().starts_with("<svg"), "{what}");
    }
    // The same through a schedule: Keras' PiecewiseConstantDecay takes any values.
    let spec = json!({"type":"PiecewiseConstantDecay","boundaries":[1],"values":[-1e308, 1e308]});
    let t = wgpu_optim::schedule::trace(&spec, 4, None).unwrap();
    assert_eq!(t.lr, [[-1e308], [-1e308], [1e308], [1e308]]);
    let svg = within_a_minute("PiecewiseConstantDecay", move || t.svg("piecewise"));
    assert!(svg.unwrap().starts_with("<svg"));
}
