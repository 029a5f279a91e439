"""Pseudo-labels: kNN search, k-reciprocal Jaccard distance, DBSCAN."""

from dsfnet.cluster.dbscan import ClusterConfig, PseudoLabels, cluster_features, dbscan_labels
from dsfnet.cluster.jaccard import jaccard_distance
from dsfnet.cluster.knn import knn_search

__all__ = ["ClusterConfig", "PseudoLabels", "cluster_features", "dbscan_labels", "jaccard_distance", "knn_search"]
