"""``cachewise replay`` end to end: synthetic corpus -> events -> trained model -> replay report.

Uses the embedded SYNTHETIC corpus (no real traces needed), the real feature and training
code, and vLLM's real scheduler for every policy, the learned one included.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cachewise.cli import main
from cachewise.replay.policies import known_policies

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def pipeline(synthetic_model: dict, tmp_path_factory) -> dict[str, Path]:
    """Events, an exported model trained on them, and a params file with a small replay section."""
    tmp = tmp_path_factory.mktemp("replay_cli")
    train = synthetic_model["train"]
    params = tmp / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "train": train,
                "replay": {
                    "max_sessions": 4,
                    "seeds": 2,
                    "workers": 2,
                    "workload": {"token_scale": 32},
                    "sweep": {"capacity_fracs": [0.3], "concurrency": [2]},
                },
            }
        )
    )
    return {"events": synthetic_model["events"], "model": synthetic_model["model"], "params": params, "out": tmp / "out"}


def test_replay_writes_results_plots_and_report(pipeline: dict[str, Path], capsys) -> None:
    argv = [
        "replay",
        "--params", str(pipeline["params"]),
        "--events", str(pipeline["events"]),
        "--model", str(pipeline["model"]),
        "--policies", ",".join(POLICIES := known_policies()),
        "--capacity-frac", "0.5",
        "--concurrency", "4",
        "--out", str(pipeline["out"]),
        "--sweep",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = pipeline["out"]
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["capacity_frac"].unique()) == [0.3, 0.5]
    assert sorted(results["concurrency"].unique()) == [2, 4]  # the sweep's grid plus the headline point
    assert len(results) == 2 * 2 * 2 * len(POLICIES)  # seeds x concurrencies x capacities x policies
    assert sorted(results["seed"].unique()) == [0, 1]
    by = results[(results["capacity_frac"] == 0.5) & (results["concurrency"] == 4)].set_index("policy")
    assert (results["harmful_evictions"] <= results["evictions"]).all()
    assert (results["recomputed_tokens"] <= results["prefill_tokens"]).all()
    assert (by.loc[["infinite"], "evictions"] == 0).all()
    assert (by.loc[["lru"], "evictions"] > 0).all(), "0.5 of the peak working set must force evictions"
    for learned in ("learned", "learned_nohints"):
        assert (by.loc[[learned], "predictor_fallbacks"] == 0).all() and (by.loc[[learned], "predictor_cpu_s"] > 0).all()
    finite = results[results["policy"] != "infinite"]
    assert (finite["min_harmful_evictions"] <= finite["harmful_evictions"]).all()
    assert (results["jct_s_mean"] >= results["service_s_mean"] - 1e-9).all()
    assert (results["sessions"] == results["sessions"].iloc[0]).all()
    assert (out / "plots" / "capacity_c4.png").stat().st_size > 0
    assert list(pd.read_csv(out / "plots" / "harmful_evictions_c4.csv").columns) == ["capacity_frac", *POLICIES]
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "gap_harmful" in report and "## Sweep: 4 concurrent sessions" in report
    assert "Paired difference against lru_arrival" in report and "±" in report
    assert "every replayed task is one its training held out" in report
    issue8 = ["policy", "capacity_frac", "concurrency", "jct_mean_s", "jct_p90_s", "jct_p99_s", "makespan_s", "hit_rate",
              "output_tokens_per_s", "harmful_evictions", "longest_admission_wait_s", "controller_us_per_step"]
    assert set(issue8) <= set(results.columns) and (results["output_tokens_per_s"] > 0).all()
    assert (by.loc[["cachewise"], "controller_us_per_step"] > 0).all()
    assert "## Session residency" in report and (out / "plots" / "residency_jct_c4.png").stat().st_size > 0
    sessions = pd.read_csv(out / "sessions.csv")  # every session of every run, beside the infinite cache's
    assert "session_jct_s" not in results.columns and len(sessions) == results["sessions"].sum()
    excess = sessions.groupby(["seed", "concurrency", "capacity_frac", "policy"])["excess_s"].mean()
    jct = results.set_index(["seed", "concurrency", "capacity_frac", "policy"])["jct_s_mean"]
    infinite = jct.xs("infinite", level="policy").reindex(jct.droplevel("policy").index).to_numpy()
    assert excess.reindex(jct.index).to_numpy() == pytest.approx(jct.to_numpy() - infinite, abs=1e-6)
    assert "## Where the time above the infinite cache goes" in report
    assert "| lru |" in capsys.readouterr().out


def test_learned_without_a_model_is_a_clear_error(pipeline: dict[str, Path], capsys) -> None:
    argv = ["replay", "--params", str(pipeline["params"]), "--events", str(pipeline["events"]),
            "--model", str(pipeline["out"] / "no-such-model"), "--policies", "lru,learned", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_bad_events_path_is_a_clear_error(pipeline: dict[str, Path], capsys) -> None:
    argv = ["replay", "--params", str(pipeline["params"]), "--events", "/nonexistent/events.parquet",
            "--policies", "lru", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "/nonexistent/events.parquet" in capsys.readouterr().err


def test_learned_refuses_tasks_the_model_was_trained_on(pipeline: dict[str, Path], capsys) -> None:
    # split "all" replays every session, training tasks included: refused, naming the model.
    argv = ["replay", "--params", str(pipeline["params"]), "--events", str(pipeline["events"]),
            "--model", str(pipeline["model"]), "--policies", "lru,learned", "--split", "all",
            "--seeds", "1", "--out", str(pipeline["out"] / "all"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(pipeline["model"]) in err and "may have been trained on" in err and "--allow-train-tasks" in err
    assert main([*argv, "--allow-train-tasks"]) == 0
    assert "provenance check OVERRIDDEN" in (pipeline["out"] / "all" / "report.md").read_text()


def test_guard_start_reaches_every_guarded_pool(pipeline: dict[str, Path], monkeypatch, capsys) -> None:
    import cachewise.replay.runner as runner

    starts: list[tuple[bool, str]] = []
    binding = runner.PolicyBinding

    def recording(predictor, clock, config):
        starts.append((config.guard.enabled, config.guard.start))
        return binding(predictor, clock, config)

    monkeypatch.setattr(runner, "PolicyBinding", recording)
    argv = ["replay", "--params", str(pipeline["params"]), "--events", str(pipeline["events"]),
            "--model", str(pipeline["model"]), "--policies", "learned,learned_unguarded", "--seeds", "1",
            "--guard-start", "lru", "--out", str(pipeline["out"] / "start"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(set(starts)) == [(False, "lru"), (True, "lru")]
    with pytest.raises(SystemExit):
        main([*argv[:-5], "--guard-start", "sometimes", *argv[-3:]])
    assert "--guard-start: invalid choice: 'sometimes'" in capsys.readouterr().err
