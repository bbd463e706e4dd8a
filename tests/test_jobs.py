import pytest

from liftvid import jobs


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_run_per_video_reports_each_video_once_and_keeps_failures_per_video(scheduler):
    # builtins travel to worker processes by name; pow(0, -1) raises ZeroDivisionError
    tasks = {"a": (2, 3), "b": (0, -1), "c": (3, 2)}
    seen = []
    results = jobs.run_per_video(pow, tasks, scheduler, workers=2, on_done=lambda vid, r: seen.append((vid, r)))
    assert list(results) == ["a", "b", "c"]  # input order, whatever the completion order
    assert results["a"] == 8 and results["c"] == 9
    assert isinstance(results["b"], ZeroDivisionError)
    assert sorted(v for v, _ in seen) == ["a", "b", "c"]
    assert dict((v, r) for v, r in seen if v != "b") == {"a": 8, "c": 9}


def test_run_per_video_on_a_cluster_reports_as_videos_finish():
    from distributed import LocalCluster

    seen = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        results = jobs.run_per_video(pow, {"a": (2, 5), "b": (0, -1)}, cluster.scheduler_address,
                                     on_done=lambda vid, r: seen.append(vid))
    assert results["a"] == 32 and isinstance(results["b"], ZeroDivisionError)
    assert sorted(seen) == ["a", "b"]


def test_unknown_scheduler_and_bad_worker_count():
    with pytest.raises(ValueError, match="unknown scheduler 'gpu'"):
        jobs.run_per_video(pow, {"a": (1, 1)}, "gpu")
    with pytest.raises(ValueError, match="workers must be"):
        jobs.run_per_video(pow, {"a": (1, 1)}, "threads", workers=0)
