"""ClusterManager: the clusters of a profile, found through their cluster files, as IPython Parallel has it."""
from __future__ import annotations

from typing import Any

from .. import paths
from .cluster import HPCCluster, list_cluster_files


class ClusterManager:
    """Keeps HPCCluster objects by key ('<profile>:<cluster_id>'): running ones found on disk, new ones made here."""

    def __init__(self, profile: str = "default", profile_dir: str | None = None):
        self.profile = profile
        self.pdir = paths.profile_dir(profile, profile_dir)
        self.clusters: dict[str, HPCCluster] = {}

    def _key(self, cluster: HPCCluster) -> str:
        return f"{self.profile}:{cluster.cluster_id}"

    def load_clusters(self) -> dict[str, HPCCluster]:
        """Add the clusters running in the profile (from their cluster files); returns them all."""
        for path in list_cluster_files(self.pdir):
            cid = path.stem[len("cluster-"):]
            key = f"{self.profile}:{cid}"
            if key not in self.clusters:
                self.clusters[key] = HPCCluster.from_file(cid, profile_dir=str(self.pdir))
        return self.clusters

    def list_clusters(self) -> list[str]:
        return sorted(self.clusters)

    def new_cluster(self, **kwargs: Any) -> tuple[str, HPCCluster]:
        """A cluster (not started) in this profile: (key, cluster)."""
        kwargs.setdefault("profile_dir", str(self.pdir))
        cluster = HPCCluster(**kwargs)
        key = self._key(cluster)
        if key in self.clusters:
            raise KeyError(f"cluster {key!r} exists already; choose another cluster_id")
        self.clusters[key] = cluster
        return key, cluster

    def get_cluster(self, key: str) -> HPCCluster:
        try:
            return self.clusters[key]
        except KeyError:
            raise KeyError(f"no cluster {key!r}; known: {', '.join(self.list_clusters()) or 'none'} "
                           f"(load_clusters() finds running ones)") from None

    def remove_cluster(self, key: str) -> HPCCluster:
        """Forget a cluster (stop it first with cluster.stop_cluster_sync())."""
        return self.clusters.pop(key)
