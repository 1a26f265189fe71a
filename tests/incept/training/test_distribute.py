"""Strategy selection from the environment (TF_CONFIG from a Kubernetes Indexed Job)."""

from incept.training.distribute import cluster_size, tf_config_from_indexed_job


def test_indexed_job_env_builds_tf_config():
    config = tf_config_from_indexed_job("t-0.svc, t-1.svc", 2222, "1")
    assert config == {"cluster": {"worker": ["t-0.svc:2222", "t-1.svc:2222"]},
                      "task": {"type": "worker", "index": 1}}
    assert cluster_size(config) == 2


def test_single_pod_or_missing_index_is_not_a_cluster():
    assert tf_config_from_indexed_job("a,b", 2222, None) is None
    assert tf_config_from_indexed_job("a", 2222, "0") is None
    assert tf_config_from_indexed_job("", 2222, "0") is None
