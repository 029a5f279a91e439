"""Pseudo-labels: kNN search, k-reciprocal Jaccard distance, DBSCAN."""

from dsfnet.cluster.dbscan import ClusterConfig, NoClusterError, PseudoLabels, cluster_features, dbscan_labels
from dsfnet.cluster.jaccard import jaccard_distance
from dsfnet.cluster.knn import knn, knn_search

__all__ = [
    "ClusterConfig", "NoClusterError", "PseudoLabels", "cluster_features", "dbscan_labels", "jaccard_distance",
    "knn", "knn_search",
]
