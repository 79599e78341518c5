"""wqsim.sim.cluster: each master of a Redis Cluster calibrated, and clusters of 10 or 50 masters predicted.

The predictions run the model alone (no Redis); the calibration runs on a real
local cluster started by wqsim.LocalCluster.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from wqsim import LocalCluster, RunConfig, WorkerConfig
from wqsim.sim import default_profile
from wqsim.sim.cluster import ClusterProfile, calibrate_nodes, masters, predict, predict_scaling

PROFILE = default_profile()
BATCH = 10
# four workers keep a master's thread busy
BUSY = RunConfig(tasks=5000, kind="noop", workers=4, worker=WorkerConfig(batch_size=BATCH))


def one_kind_of_master(bus_message_s: float) -> ClusterProfile:
    return ClusterProfile(addresses=("a:1",), profiles=(PROFILE,), bus_message_s=bus_message_s)


# -- predictions -------------------------------------------------------------------------------


def test_without_a_bus_cost_n_masters_predict_n_times_one_masters_throughput():
    one, ten = predict_scaling(BUSY, one_kind_of_master(0.0), (1, 10))
    assert ten.tasks_per_s == pytest.approx(10 * one.tasks_per_s, rel=1e-9)
    assert ten.tasks_per_s_per_node == pytest.approx(one.tasks_per_s)
    assert one.bus_share == ten.bus_share == 0.0


def test_every_other_masters_publishes_lower_each_masters_throughput_as_masters_are_added():
    predicted = predict_scaling(BUSY, one_kind_of_master(2e-6), (1, 10, 50))
    per_master = [p.tasks_per_s_per_node for p in predicted]
    assert per_master[0] > per_master[1] > per_master[2]
    assert [p.bus_share for p in predicted] == sorted(p.bus_share for p in predicted)
    assert predicted[0].bus_share == 0.0 < predicted[1].bus_share < predicted[2].bus_share
    assert predicted[2].tasks_per_s > predicted[1].tasks_per_s  # the cluster still grows, each master less


def test_no_master_is_predicted_past_its_threads_ceiling_with_the_bus_included():
    bus_s = 2e-6
    for p in predict_scaling(BUSY, one_kind_of_master(bus_s), (1, 10, 50)):
        loaded = replace(PROFILE, server_call_s=PROFILE.server_call_s + (p.nodes - 1) * bus_s)
        # 3 %: the makespan starts at the first task, after the first claims (up to 120 of 5,000 tasks);
        # a master that did not pay for the bus would be 45 % over at 50 masters
        assert p.tasks_per_s_per_node <= loaded.redis_capacity(BATCH) * 1.03
        assert p.redis_utilisation > 0.8  # four workers a master keep its thread busy


def test_masters_beyond_those_measured_repeat_their_profiles_and_the_slowest_sets_the_pace():
    slow = replace(PROFILE, server_settle_task_s=4 * PROFILE.server_settle_task_s)
    cluster = ClusterProfile(addresses=("fast:1", "slow:2"), profiles=(PROFILE, slow), bus_message_s=0.0)
    one, two, four = predict_scaling(BUSY, cluster, (1, 2, 4))
    assert one.tasks_per_s > two.tasks_per_s / 2  # one master: the fast one alone
    assert four.tasks_per_s == pytest.approx(2 * two.tasks_per_s, rel=1e-9)  # fast, slow, fast, slow


def test_a_cluster_profile_needs_one_profile_per_address_and_a_non_negative_bus_cost():
    with pytest.raises(ValueError, match="one profile per master"):
        ClusterProfile(addresses=("a:1", "b:2"), profiles=(PROFILE,), bus_message_s=0.0)
    with pytest.raises(ValueError, match="one profile per master"):
        ClusterProfile(addresses=(), profiles=(), bus_message_s=0.0)
    with pytest.raises(ValueError, match="bus_message_s must be >= 0"):
        one_kind_of_master(-1e-6)


def test_a_prediction_takes_one_shards_config_and_at_least_one_master():
    with pytest.raises(ValueError, match="drop shards"):
        predict(replace(BUSY, shards=3), one_kind_of_master(0.0), 3)
    with pytest.raises(ValueError, match="nodes"):
        predict(BUSY, one_kind_of_master(0.0), 0)


# -- calibration on a real cluster -------------------------------------------------------------


@pytest.mark.real_redis
@pytest.mark.slow
def test_calibrate_nodes_measures_every_master_of_a_real_cluster_and_the_bus_and_leaves_nothing_behind():
    with LocalCluster(masters=3) as cluster:
        found = calibrate_nodes(cluster.url, tasks=100)
        assert sorted(found.addresses) == sorted(n.address for n in cluster.masters_now())
        # each master measured working (a small, noisy calibration may solve one per-task part to 0)
        assert all(p.call_s(claimed=10, settled=10) > 0 and p.redis_capacity(10) < 10**7 for p in found.profiles)
        assert found.bus_message_s > 0  # every other master handled the forwarded messages
        for node in cluster.nodes:
            host, port = node.address.rsplit(":", 1)
            client = redis.Redis(host=host, port=int(port))
            leftovers = list(client.scan_iter("*calibrate*"))
            client.close()
            assert leftovers == [], f"{node.address} kept {leftovers[:3]}"
        assert predict(BUSY, found, 3).tasks_per_s > 0


@pytest.mark.real_redis
def test_masters_of_a_single_server_is_refused_in_one_line(redis_url):
    with pytest.raises(ValueError, match="is not a Redis Cluster node"):
        masters(redis_url)
