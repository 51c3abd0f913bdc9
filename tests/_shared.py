"""Settings shared by several test files (imported as ``from _shared import ...``)."""

from sgcnn.core.clustering import KMeansSettings
from sgcnn.engine.runner import Runner

# One k-means restart with few iterations: grouping tiny test models fast; the tests check
# structure and exactness, not the clustering's quality.
FAST_KMEANS = KMeansSettings(n_init=1, max_iter=50)


def stop_after_first_stage(monkeypatch) -> None:
    """The next run stops (as after Ctrl-C, state saved) once its first stage is done."""
    original = Runner._check_stop
    calls = []

    def check_stop(self):
        calls.append(self.stage)
        if len(calls) == 1:
            self._interrupted()
        original(self)

    monkeypatch.setattr(Runner, "_check_stop", check_stop)
