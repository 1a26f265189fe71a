"""Strategy selection from the environment (TF_CONFIG from a Kubernetes Indexed Job)."""

from incept.training.distribute import cluster_size, tf_config_from_indexed_job


def test_indexed_job_env_builds_tf_config():
    env = {"JOB_COMPLETION_INDEX": "1", "INCEPT_WORKER_HOSTS": "t-0.svc, t-1.svc",
           "INCEPT_WORKER_PORT": "2222"}
    config = tf_config_from_indexed_job(env)
    assert config == {"cluster": {"worker": ["t-0.svc:2222", "t-1.svc:2222"]},
                      "task": {"type": "worker", "index": 1}}
    assert cluster_size(config) == 2


def test_single_pod_or_missing_index_is_not_a_cluster():
    assert tf_config_from_indexed_job({"INCEPT_WORKER_HOSTS": "a,b"}) is None
    assert tf_config_from_indexed_job({"JOB_COMPLETION_INDEX": "0", "INCEPT_WORKER_HOSTS": "a"}) is None
    assert tf_config_from_indexed_job({}) is None
