"""Budgets: the fit's arithmetic figure by figure, the refusal of budgets that cannot produce a model, and a
sweep that starts no trial the budget cannot finish (the tiny BERT of conftest.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math

import optuna
import pytest

from finetune.cli.main import main
from finetune.plan import budget
from finetune.plan.budget import Estimate, Request, StageCosts, Throughput, Workload
from finetune.system import cpu

SPEED = Throughput(train_example_s=0.01, eval_example_s=0.005, trial_overhead_s=10.0, threads=1)
WORK = Workload(train_rows=1000, val_rows=100, evals_per_epoch=1)
STAGES = StageCosts(data=5, automl=5, select=5, register=5, deploy=5, report=5)


def request(**changes) -> Request:
    base = Request(
        budget_s=300.0,
        speed=SPEED,
        work=WORK,
        stages=STAGES,
        max_epochs=3,
        max_trials=16,
        lanes=2,
        sweep=True,
        automl_s=60,
        policy="Bandit from epoch 1",
    )
    return dataclasses.replace(base, **changes)


def test_a_trial_costs_its_overhead_plus_its_epochs_of_training_and_evaluation():
    # 1000 x 0.01 s of training + 100 x 0.005 s of evaluation = 10.5 s an epoch.
    assert budget.epoch_seconds(SPEED, WORK) == pytest.approx(10.5)
    assert budget.trial_seconds(SPEED, WORK, 3) == pytest.approx(10 + 31.5)
    # Two threads: 2 ** 0.6 = 1.5157 times faster per example; the overhead does not shrink.
    two = SPEED.at_threads(2)
    assert two.train_example_s == pytest.approx(0.01 / 1.515717, rel=1e-5) and two.trial_overhead_s == 10.0


def test_the_fit_takes_the_most_epochs_then_the_most_trials_that_fit():
    estimate = budget.fit(request())
    # AutoML gets min(60, 10 % of 300) = 30 s (+ 5 fixed); the other stages 25 s: 60 s beside training.
    # The sweep's share: 300 x 0.95 - 60 = 225 s; a 3-epoch trial on one thread is 41.5 s: 5 per lane, 2 lanes.
    assert (estimate.epochs, estimate.trials, estimate.concurrency, estimate.threads) == (3, 10, 2, 1)
    assert estimate.automl_s == 30 and estimate.trial_s == pytest.approx(41.5)
    assert estimate.stages == {
        "data": 5,
        "search": pytest.approx(5 * 41.5),
        "automl": 35,
        "select": 5,
        "register": 5,
        "deploy": 5,
        "report": 5,
    }
    assert estimate.total_s == pytest.approx(267.5)
    assert estimate.sweep_s == pytest.approx(300 * 0.95 - 55 - 5)
    assert estimate.trial_timeout_s == 83 and estimate.max_trials == 16
    assert estimate.reason == (
        "10 trials x 3 epochs, 2 at a time (1 thread each), Bandit from epoch 1 (a stopped "
        "trial's time goes to more trials, up to 16), expected 4.5 min of 5"
    )


def test_a_budget_without_room_for_two_full_trials_trains_once_at_the_configured_settings():
    # 120 s: AutoML 12 + 5, others 25 -> 42 s; the share 114 - 42 = 72 s. Three epochs (41.5 s) give one trial a
    # lane = 2 trials; 72 // 41.5 = 1 per lane: 2 trials x 3 epochs fit.
    roomy = budget.fit(request(budget_s=120.0))
    assert (roomy.epochs, roomy.trials, roomy.sweep) == (3, 2, True)
    # The 72 - 41.5 = 30.5 s they leave hold a shorter trial a lane: (30.5 - 10) / 10.5 = 1.95 -> 1.9 epochs,
    # which the runner starts; the estimate counts them.
    assert (roomy.extra_trials, roomy.extra_epochs) == (2, 1.9)
    assert roomy.stages["search"] == pytest.approx(41.5 + 10 + 1.9 * 10.5, abs=0.05)
    assert "then 2 of 1.9 epochs in what is left" in roomy.reason
    # 70 s: share 66.5 - 40 = 26.5 s: two 3-epoch trials do not fit (two 1-epoch ones would, 20.5 s a lane), so
    # one training on both cores, stretched to what the share leaves: (26.5 - 10) / (10.5 / 1.5157) = 2.38 -> 2.3.
    tight = budget.fit(request(budget_s=70.0))
    assert (tight.sweep, tight.trials, tight.concurrency, tight.threads, tight.epochs) == (False, 1, 1, 2, 2.3)
    assert "a sweep needs 2 trials of 3 epochs" in tight.reason and "3 epochs would not fit" in tight.reason
    assert tight.trial_s == pytest.approx(10 + 2.3 * 10.5 / 1.515717, abs=0.051)  # rounded to 0.1 s


def test_one_training_gets_every_core_and_the_epochs_that_fit():
    single = budget.fit(request(sweep=False, budget_s=100.0))
    # 100 x 0.95 - (5 + 15 + 20) = 55 s; on two threads an epoch is 10.5 / 1.5157 = 6.93 s: 3 epochs = 30.8 s.
    assert (single.trials, single.epochs, single.concurrency, single.threads) == (1, 3, 1, 2)
    assert single.stages["train"] == pytest.approx(10 + 3 * 10.5 / 1.515717, abs=0.05)  # stages round to 0.1 s
    assert single.reason.startswith("one training of 3 epochs")


def test_a_sweep_the_budget_cuts_to_one_trial_becomes_one_training_at_the_configured_settings():
    from finetune.cli.main import compose
    from finetune.plan import fitting
    from finetune.plan.build import build_plan

    # 60 s: AutoML 10 + 5, others 25 -> 40 s; the share 57 - 40 = 17 s holds no two 1-epoch trials (20.5 s
    # each on one thread) but one training on both cores stretched to what the share leaves.
    estimate = budget.fit(request(budget_s=60.0))
    share = 60 * 0.95 - 40
    assert (estimate.sweep, estimate.trials, estimate.concurrency, estimate.threads) == (False, 1, 1, 2)
    assert estimate.epochs == math.floor((share - 10) / (10.5 / 1.515717) * 10) / 10
    assert "train" in estimate.stages and "search" not in estimate.stages
    assert "at the configured settings: a sweep needs 2 trials of 3 epochs" in estimate.reason
    # The plan trains once, at model.* as configured, instead of sweeping one random sample.
    args = ["search=bandit", "budget=none", "dry_run=true"]
    swept = build_plan(compose(args, {}), args, "one-trial")
    applied = fitting.apply(swept, estimate)
    assert applied.search.sampling == "none" and "train" in applied.stages and "search" not in applied.stages
    assert applied.model.epochs == estimate.epochs and applied.model.learning_rate == swept.model.learning_rate


def test_a_budget_smaller_than_one_minimal_trial_is_refused_with_the_smallest_that_works():
    with pytest.raises(budget.BudgetTooSmall) as refused:
        budget.fit(request(budget_s=40.0))
    # The least a model costs: the stages 30 s (AutoML's fixed 5 s among them), one 1-epoch trial on both
    # cores (10 + 10.5 / 1.5157 s), AutoML's search at its least (10 s: 10 % of 60 s is less), 5 % headroom.
    trial = 10 + 10.5 / 1.515717
    assert refused.value.minimum_s == pytest.approx((30 + trial + 10) / 0.95, rel=1e-5)
    assert budget.fit(request(budget_s=refused.value.minimum_s * 1.0001)).trials == 1
    # With AutoML's search capped at 3 s by the config, its share never grows past that; with slow trials
    # its 10 % share passes 10 s and the smallest budget pays it.
    assert budget.minimum_seconds(request(automl_s=3)) == pytest.approx((30 + trial + 3) / 0.95, rel=1e-5)
    slow = dataclasses.replace(SPEED, trial_overhead_s=200.0)
    assert budget.minimum_seconds(request(speed=slow)) == pytest.approx((30 + trial + 190) / 0.85, rel=1e-5)
    assert budget.fit(request(budget_s=refused.value.minimum_s + 1)).trials >= 1


def test_the_runner_scales_the_next_trial_by_what_the_trials_so_far_took():
    estimate = Estimate(
        budget_s=300,
        trials=4,
        max_trials=8,
        epochs=2,
        concurrency=1,
        threads=1,
        trial_s=50.0,
        trial_overhead_s=10.0,
        trial_timeout_s=100,
        sweep_s=200,
        automl_s=None,
    )
    # A trial stopped after 1 epoch was expected to take 10 + 20 s; one that ran 2 epochs 50 s.
    assert budget.expected_trial_seconds(estimate, 1.0) == 30.0
    factor = budget.speed_factor([(45.0, 30.0), (75.0, 50.0)])
    assert factor == pytest.approx(1.5)
    # 2 epochs need 10 + 40 s x 1.5 = 75 s; with 60 s left the next trial gets (60 / 1.5 - 10) / 20 = 1.5 epochs;
    # with 40 s, not even one epoch fits.
    assert budget.epochs_that_fit(estimate, 75.0, factor) == 2.0
    assert budget.epochs_that_fit(estimate, 60.0, factor) == 1.5
    assert budget.epochs_that_fit(estimate, 40.0, factor) == 0.0
    assert budget.speed_factor([]) == 1.0


def test_spent_compares_each_stage_with_its_estimate():
    estimate = budget.fit(request())
    section = budget.spent(
        estimate,
        {"data": 6.0, "search": 230.0, "automl": 40.0, "select": 5.0, "register": 4.0, "deploy": 6.0, "report": 4.0},
    )
    assert section["spent_s"] == 295.0 and section["spent_of_budget"] == pytest.approx(295 / 300, abs=1e-3)
    assert section["estimate_error"] == pytest.approx((267.5 - 295) / 295, abs=1e-3)
    assert section["stages"]["search"] == {"expected_s": 207.5, "spent_s": 230.0}


@pytest.mark.slow  # a calibration subprocess (imports torch, times real steps)
@pytest.mark.parametrize("minutes", ["0", "-2", "0.2"])
def test_a_nonsense_budget_ends_in_one_line_naming_the_smallest_budget(
    capsys, monkeypatch, tmp_path, tiny_model_dir, minutes
):
    # Both calls must see the same machine: under `pytest -n 2` the other worker's load comes and goes, and a load
    # that leaves between the calls re-takes a contended calibration and changes what threads buy (CI once named
    # 1.3 minutes, then measured an idle machine and asked for 1.4). Busy at the contention threshold keeps the
    # first call's calibration and its thread speed-up for the second.
    monkeypatch.setattr(cpu, "busy_cores_now", lambda: cpu.CONTENDED_CORES)
    code = main(
        [
            "dry_run=true",
            f"output_root={tmp_path}",
            f"model.path={tiny_model_dir}",
            "dataset.sample=300",
            f"budget.minutes={minutes}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: budget.minutes={float(minutes):g}: too small to produce a model")
    smallest = float(err.split("the smallest budget that can is budget.minutes=")[1].split()[0])
    # The named budget is enough: the same plan with it fits.
    assert (
        main(
            [
                "dry_run=true",
                f"output_root={tmp_path}",
                f"model.path={tiny_model_dir}",
                "dataset.sample=300",
                f"budget.minutes={smallest}",
            ]
        )
        == 0
    )
    assert f"budget * budget.minutes={smallest:g}: " in capsys.readouterr().out


def test_a_cost_budget_on_a_local_run_is_a_plan_problem(capsys, tmp_path):
    assert main(["dry_run=true", f"output_root={tmp_path}", "budget.usd=5"]) == 2
    assert "budget.usd=5: a local run has no price" in capsys.readouterr().err


@pytest.mark.slow  # a real sweep of tiny trials
def test_the_sweep_starts_no_trial_that_cannot_finish_in_the_budget(tmp_path, tiny_model_dir):
    from finetune.data import prepare
    from finetune.search.runner import run_sweep
    from test_search_runner import make_plan, overrides

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plan = make_plan(
        overrides(
            tmp_path,
            tiny_model_dir,
            tracking,
            "model.epochs=1",
            "dataset.sample=120",
            "search=random",
            "search.policy.type=none",
            "search.limits.max_total_trials=3",
            "search.limits.max_concurrent_trials=2",
            "compute.num_threads=2",
            "search.limits.timeout=600",
        )
    )
    data = prepare(plan.dataset, tmp_path / "data")
    # Two lanes are free at the start, but the plan expects a 1-epoch trial to take 1000 s and the sweep's share
    # is 600 s: the first trial starts (without it there is no model), the second cannot finish and does not.
    estimate = Estimate(
        budget_s=700,
        trials=1,
        max_trials=3,
        epochs=1,
        concurrency=2,
        threads=1,
        trial_s=1000.0,
        trial_overhead_s=0.0,
        trial_timeout_s=900,
        sweep_s=600,
        automl_s=None,
    )
    plan = dataclasses.replace(plan, estimate=estimate)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sweep = run_sweep(plan, data, tmp_path / "sweep")
    assert [t.status for t in sweep.trials] == ["completed"] and sweep.best is not None
    # The one trial is the configured settings: what a budget too small for a sweep would have trained alone.
    assert sweep.trials[0].params == {"learning_rate": plan.model.learning_rate, "batch_size": plan.model.batch_size}
    assert "budget: no more trials" in printed.getvalue() and "not started" not in printed.getvalue()
    assert 0 < sweep.compute["speed_factor"] < 1 and sweep.trials[0].ended_s > 0
    assert (
        len(optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}").get_trials())
        == 1
    )


def aml_plan(*overrides: str):
    from finetune.cli.main import compose
    from finetune.plan.build import build_plan

    args = ["compute=a100", "dry_run=true", *overrides]
    return build_plan(compose(args, {}), args, "aml-budget")


@pytest.mark.parametrize("usd", [20.0, 12.0])
def test_an_aml_cost_budget_exports_limits_whose_worst_case_fits_it(usd):
    from finetune.launch.azureml import pricing, throughput

    fitted = throughput.fit(aml_plan(f"budget.usd={usd}"), train_rows=2088, val_rows=261)
    limits = fitted.search.limits
    worst = sum(
        e.cost_usd
        for e in (pricing.sweep_estimate(fitted), pricing.automl_estimate(fitted), pricing.steps_estimate(fitted))
    )
    assert worst <= usd and f"of ${usd:g} by the price table" in fitted.estimate.reason
    # Every limit is set: the sweep cannot outrun what the bound assumed.
    assert limits.max_total_trials >= 2 and limits.max_concurrent_trials == 4
    assert limits.trial_timeout == math.ceil(2 * fitted.estimate.trial_s) and limits.timeout >= limits.trial_timeout
    assert fitted.estimate.cost_usd < worst


def test_an_aml_budget_too_small_names_the_smallest_that_works():
    from finetune.errors import UserError
    from finetune.launch.azureml import throughput

    with pytest.raises(UserError, match=r"budget.usd=1: too small .* the smallest budget that can is budget.usd=") as e:
        throughput.fit(aml_plan("budget.usd=1"), train_rows=2088, val_rows=261)
    smallest = float(str(e.value).split("budget.usd=")[2].split()[0])
    assert throughput.fit(aml_plan(f"budget.usd={smallest}"), train_rows=2088, val_rows=261).estimate.trials == 1


def test_the_report_shows_budget_against_spent_and_the_sweeps_anytime_curve(tmp_path):
    from finetune.plan.results import SweepResult, SweepTrial
    from finetune.plan.summary import RunSummary
    from finetune.report.budget import best_so_far, budget_section
    from finetune.report.common import Figures

    summary = RunSummary(tmp_path / "summary.json", {"name": "b"})
    trials = [
        SweepTrial(0, {"learning_rate": 1e-4}, "completed", 0.95, [0.94, 0.95], 2.0, ended_s=300.0),
        SweepTrial(1, {"learning_rate": 1e-5}, "early_terminated", 0.80, [0.80], 1.0, ended_s=200.0),
        SweepTrial(2, {"learning_rate": 5e-5}, "completed", 0.96, [0.93, 0.96], 2.0, ended_s=480.0),
    ]
    summary.sweep = SweepResult("random", {"type": "bandit"}, "val_auc_weighted", "maximize", trials, None, {})
    summary.budget = budget.spent(budget.fit(request()), {"data": 6.0, "search": 230.0, "automl": 40.0})
    assert [(round(m, 2), v) for m, v, _, _ in best_so_far(summary)] == [(3.33, 0.80), (5.0, 0.95), (8.0, 0.96)]
    lines = budget_section(summary, Figures(tmp_path))
    text = "\n".join(lines)
    assert "| search | 3.5 min | 3.8 min |" in text and "| select | 5 s | – |" in text
    assert "Spent 4.6 min of the 5-minute budget (92%)" in text
    assert "the sweep was still improving" in text and (tmp_path / "figures" / "sweep_anytime.png").exists()


def test_the_next_plan_uses_the_stage_times_and_speed_the_last_run_kept(tmp_path, monkeypatch):
    from finetune.plan import calibration
    from finetune.system.processes import started_at

    assert started_at() <= __import__("time").time()
    plan = aml_plan()  # any plan: learn() keys its entry by the plan's model, shape and data
    monkeypatch.setattr(calibration, "CACHE_DIR", tmp_path)
    entry = {
        "train_example_s": 0.1,
        "eval_example_s": 0.05,
        "load_s": 6.0,
        "threads": 1,
        "measured": "then",
        "load_average": 1.0,
        "rows": {"train": 10, "val": 2},
    }
    calibration.cache_file(calibration.request(plan)).write_text(__import__("json").dumps(entry))
    # The run spent 15 of its 20 s of start-up calibrating: the next run finds the cache and does not.
    spent = {"start": 20.0, "data": 2.0, "search": 300.0, "automl": 70.0, "select": 30.0}
    calibration.learn(plan, 1.5, spent, calibration_s=15.0)
    kept, calibrating_s = calibration.calibrate(plan, busy_now=0.0)
    assert calibrating_s == 0.0  # from the cache
    costs = calibration.stage_costs(kept)
    assert (costs.data, costs.automl, costs.select) == (7.0, 70.0 - plan.automl.time_budget_s, 30.0)
    assert costs.deploy == budget.LOCAL_STAGES.deploy  # nothing measured: the shipped figure
    assert calibration.stage_costs(kept, calibration_s=12.0).data == 19.0  # a calibration now is start-up time
    speed = calibration.throughput(kept, busy_now=0.5, cores=2)
    assert speed.train_example_s == pytest.approx(0.15) and speed.thread_exponent == budget.THREAD_EXPONENT
    assert calibration.throughput(kept, busy_now=1.8, cores=2).thread_exponent == 0.0
    # A calibration that timed its steps on every core says what a second thread buys on this machine.
    measured = calibration.throughput({**kept, "thread_exponent": 0.95}, busy_now=0.3, cores=2)
    assert measured.thread_exponent == 0.95 and "2 threads measured 1.93x one" in measured.basis
    assert measured.at_threads(2).train_example_s == pytest.approx(0.15 / 2**0.95)


def test_what_the_command_line_sets_stays_as_set_under_a_budget():
    from finetune.plan import fitting

    plan = aml_plan(
        "search.limits.trial_timeout=5",
        "search.limits.max_concurrent_trials=1",
        "model.epochs=2",
        "search.limits.max_total_trials=3",
    )
    wanted = fitting.request_for(plan, SPEED, WORK, 2, STAGES, 300.0)
    assert (wanted.fixed_epochs, wanted.fixed_lanes, wanted.max_trials) == (True, 1, 3)
    estimate = budget.fit(wanted)
    # 2 epochs exactly (no stretch to fill), one lane, at most 3 trials.
    assert (estimate.epochs, estimate.concurrency, estimate.trials) == (2.0, 1, 3)
    limits = fitting.apply(plan, estimate).search.limits
    assert (limits.trial_timeout, limits.max_concurrent_trials, limits.max_total_trials) == (5, 1, 3)
    assert limits.timeout == math.floor(estimate.sweep_s)


def test_a_calibration_taken_on_a_busy_machine_is_taken_again_when_it_is_idle(monkeypatch):
    from finetune.plan import calibration

    monkeypatch.setattr(cpu, "cores", lambda: 2)
    assert calibration._measured_busy_now_idle({"load_average": 2.3}, busy_now=0.1)
    assert not calibration._measured_busy_now_idle({"load_average": 0.8}, busy_now=0.1)
    assert not calibration._measured_busy_now_idle({"load_average": 2.3}, busy_now=1.5)  # still busy: it stands
    # The load average lags a minute behind: what other processes used while the steps were timed decides.
    assert calibration._measured_busy_now_idle({"load_average": 1.4, "others_busy_cores": 0.9}, busy_now=0.1)
    assert not calibration._measured_busy_now_idle({"load_average": 1.4, "others_busy_cores": 0.1}, busy_now=0.1)


def test_the_calibration_counts_the_cpu_other_processes_take_while_it_times():
    import subprocess
    import sys

    window = cpu.cpu_marks()
    spin = "import time\nend = time.perf_counter() + 1.5\nwhile time.perf_counter() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    # A child spinning a core for most of the window (other tests may add to it, never take from it).
    assert cpu.others_busy_cores(window) > cpu.CONTENDED_CORES


def test_a_local_plan_trains_on_the_threads_its_budget_counted_on(monkeypatch):
    """Training sizes its threads by the load average unless told; right after a calibration that is high, and
    the one training the fit planned on both cores ran on one (1.7x its estimate)."""
    from finetune.cli.main import compose
    from finetune.launch import local
    from finetune.plan import calibration
    from finetune.plan.build import build_plan

    measured = {
        "train_example_s": 0.001,
        "eval_example_s": 0.0005,
        "load_s": 1.0,
        "threads": 1,
        "thread_exponent": 0.9,
        "device": "cpu",
        "rows": {"train": 100, "val": 20},
        "measured": "now",
        "load_average": 0.1,
    }
    monkeypatch.setattr(calibration, "calibrate", lambda plan, busy_now: (measured, 0.0))
    monkeypatch.setattr(cpu, "cores", lambda: 2)
    monkeypatch.setattr(cpu, "busy_cores_now", lambda: 0.1)
    args = ["search=none", "budget.minutes=10", "dry_run=true"]
    plan = local.resolve(build_plan(compose(args, {}), args, "threads"))
    assert plan.estimate.threads == 2 and plan.compute.num_threads == 2
    pinned = ["search=none", "budget.minutes=10", "compute.num_threads=1", "dry_run=true"]
    assert local.resolve(build_plan(compose(pinned, {}), pinned, "pinned")).compute.num_threads == 1


def test_a_single_training_teaches_the_next_plan_its_speed_as_a_sweep_does():
    single = budget.fit(request(sweep=False, budget_s=100.0))
    overhead = single.trial_overhead_s
    # Its epochs took 80 % of the plan (the fixed overhead as planned): the next plan scales examples by 0.8.
    spent = overhead + 0.8 * (single.trial_s - overhead)
    assert budget.training_speed_factor(single, spent) == pytest.approx(0.8, abs=1e-4)
    assert budget.training_speed_factor(single, 0.0) == 1.0  # nothing ran: nothing learned


def test_what_a_training_capped_at_its_epochs_leaves_goes_to_automl():
    # 200 s: AutoML 20 + 5, others 25 -> 50 s; one 3-epoch training on both cores is 10 + 3 x 6.93 = 30.8 s, so
    # 190 - 50 - 30.8 = 109.2 s would go unused: AutoML's search gets them (unless the command line set its time).
    single = budget.fit(request(sweep=False, budget_s=200.0))
    assert single.epochs == 3 and single.automl_s == 20 + 109
    assert single.total_s == pytest.approx(190, abs=1.1) and "AutoML searches 129 s" in single.reason
    assert budget.fit(request(sweep=False, budget_s=200.0, fixed_automl=True)).automl_s == 20
    # A sweep spends its own slack on more trials: AutoML keeps its share.
    assert budget.fit(request(budget_s=300.0)).automl_s == 30


def test_automl_searches_what_training_left_of_the_budget():
    estimate = budget.fit(request(budget_s=300.0))
    # 300 x 0.95 = 285 s to spend; AutoML's fixed part is 5 s; select, register, deploy and report 20 s after it.
    # A sweep that ended 200 s into the run leaves 285 - 200 - 5 - 20 = 60 s (30 were planned).
    assert estimate.automl_s == 30
    assert budget.automl_search_left(estimate, elapsed_s=200.0) == 60
    # One that overran gives back AutoML's time, down to the least search that still finds a model.
    assert budget.automl_search_left(estimate, elapsed_s=250.0) == 10
    assert budget.automl_search_left(estimate, elapsed_s=400.0) == budget.MIN_AUTOML_S
    without = budget.fit(request(budget_s=300.0, automl_s=None))
    assert budget.automl_search_left(without, elapsed_s=200.0) is None


def test_the_local_run_hands_automl_the_time_left_unless_the_command_line_set_it(monkeypatch):
    from finetune.launch import local
    from finetune.plan.summary import RunSummary

    estimate = budget.fit(request(budget_s=300.0))
    plan = dataclasses.replace(aml_plan(), estimate=estimate)
    monkeypatch.setattr(local.processes, "started_at", lambda: __import__("time").time() - 180.0)
    summary = RunSummary.__new__(RunSummary)
    summary.run = {}
    given = local._automl_gets_what_is_left(plan, summary)
    assert given.automl.time_budget_s in (79, 80) and summary.run["automl_search_s"] == given.automl.time_budget_s
    pinned = dataclasses.replace(plan, overrides=[*plan.overrides, "automl.time_budget_s=45"])
    assert local._automl_gets_what_is_left(pinned, summary) is pinned
    unbudgeted = dataclasses.replace(plan, estimate=None)
    assert local._automl_gets_what_is_left(unbudgeted, summary) is unbudgeted


def test_the_calibration_times_batches_as_long_as_a_trainings_on_average():
    """Its batches come from the middle of equal slices of a length-sorted megabatch, so neither the one batch
    holding the longest text nor the shortest decides the time (the ends made estimates 2.5x too long)."""
    import random

    from finetune.plan import calibration

    rng = random.Random(3)
    lengths = [min(128, 5 + int(rng.expovariate(1 / 15))) for _ in range(2000)]
    picks = calibration._batches(lengths, 16, calibration.TRAIN_STEPS)
    padded = lambda batch: max(lengths[i] for i in batch)  # noqa: E731
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    mega = sorted(order[: 50 * 16], key=lambda i: lengths[i])
    groups = [mega[i : i + 16] for i in range(0, len(mega), 16)]
    assert len(picks) == calibration.TRAIN_STEPS
    assert groups[-1] not in picks and groups[0] not in picks
    mean_pick = sum(map(padded, picks)) / len(picks)
    mean_all = sum(map(padded, groups)) / len(groups)
    assert abs(mean_pick - mean_all) / mean_all < 0.2


def test_before_any_run_selection_is_expected_to_take_the_models_pass_over_val_and_test():
    from finetune.plan import calibration

    measured = {"rows": {"train": 4560, "val": 4581, "test": 4797}}
    speed = dataclasses.replace(SPEED, eval_example_s=0.014)
    assert calibration.stage_costs(measured, 0.0, speed).select == pytest.approx((4581 + 4797) * 0.014)
    # A small val and test keep the shipped figure (loading the candidates, the decision rules); a run's own wins.
    small = {"rows": {"train": 2088, "val": 261, "test": 261}}
    assert calibration.stage_costs(small, 0.0, speed).select == budget.LOCAL_STAGES.select
    assert calibration.stage_costs({**measured, "stages": {"select": 83.5}}, 0.0, speed).select == 83.5


@pytest.mark.parametrize(
    "native_bf16, configured, timed", [(True, "auto", "bf16"), (False, "auto", "fp32"), (True, "fp32", "fp32")]
)
def test_the_calibration_times_steps_in_the_format_training_will_use(
    tmp_path, tiny_model_dir, monkeypatch, native_bf16, configured, timed
):
    """On a CPU with native bf16 training runs under bf16 autocast; fp32 calibration steps took twice its time."""
    import time

    import torch

    from finetune.cli.main import compose
    from finetune.plan import calibration
    from finetune.plan.build import build_plan
    from finetune.train import hardware

    args = [
        f"output_root={tmp_path}",
        f"model.path={tiny_model_dir}",
        "dataset.sample=120",
        f"compute.precision={configured}",
    ]
    spec = calibration.request(build_plan(compose(args, {}), args, "calibration-precision"))
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native_bf16)
    formats = []
    real_autocast = torch.autocast

    def recording_autocast(device_type, dtype, enabled):
        formats.append(str(dtype).removeprefix("torch.") if enabled else "fp32")
        return real_autocast(device_type=device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch, "autocast", recording_autocast)
    measured = calibration.measure({**spec, "started": time.time()})
    assert measured["precision"] == timed and measured["train_example_s"] > 0
    assert set(formats) == {"bfloat16" if timed == "bf16" else "fp32"}
