"""Settings shared by several test files (imported as ``from _shared import ...``)."""

from sgcnn.core.clustering import KMeansSettings

# One k-means restart with few iterations: grouping tiny test models fast; the tests check
# structure and exactness, not the clustering's quality.
FAST_KMEANS = KMeansSettings(n_init=1, max_iter=50)
