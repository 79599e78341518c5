"""wqsim.names: queue names unique to the OS user and the kernel, valid by the queue-name rule."""

from __future__ import annotations

import configparser
import getpass
import subprocess
import sys
from pathlib import Path

import pytest

import wqsim
from wqsim.keys import QUEUE_NAME
from wqsim.names import SESSION_SUFFIX, session_queue_name, session_token, user_name


def test_a_session_name_is_the_base_then_the_user_then_the_kernels_token():
    assert session_queue_name("nb03-shortcomings", user="alice", token="3fa2b1") == "nb03-shortcomings.alice.3fa2b1"


def test_by_default_the_name_carries_the_os_user_and_this_processes_token():
    name = session_queue_name("nb01-overview")
    assert name == f"nb01-overview.{user_name()}.{session_token()}"
    assert user_name() == getpass.getuser().replace(".", "_")[:16]


def test_the_name_is_stable_within_one_process_so_rerunning_a_cell_finds_the_same_queue():
    assert session_queue_name("x") == session_queue_name("x")
    assert session_token() == session_token()


def test_another_process_another_kernel_gets_another_name():
    code = "from wqsim.names import session_queue_name; print(session_queue_name('nb'))"
    names = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(3)
    }
    assert len(names) == 3
    assert session_queue_name("nb") not in names


def test_two_users_on_one_redis_get_different_names_even_with_the_same_token():
    assert session_queue_name("nb", user="alice", token="000000") != session_queue_name(
        "nb", user="bob", token="000000"
    )


@pytest.mark.parametrize("user", ["first.last", "DOMAIN\\bob", "ünïcode", "a b:c#d@e{f}", "x" * 40])
def test_a_user_name_is_reduced_to_what_a_queue_name_allows(user):
    name = session_queue_name("nb02-testing", user=user, token="abcdef")
    assert QUEUE_NAME.match(name)
    assert name.count(".") == 2, "'.' separates base, user and token only"
    assert SESSION_SUFFIX.search(name)


def test_every_name_is_valid_by_the_queue_name_rule_and_a_queue_accepts_it(fake_client):
    name = session_queue_name("nb05-graphs")
    assert QUEUE_NAME.match(name) and len(name) <= 64
    wqsim.Queue(fake_client, name)  # would raise on an invalid name
    wqsim.Queue(fake_client, f"{name}-policy")


@pytest.mark.parametrize("base", ["", "-leading-dash", "has space", "brace{", "colon:", "x" * 65])
def test_an_invalid_base_is_refused(base):
    with pytest.raises(ValueError, match="base"):
        session_queue_name(base, user="u", token="abcdef")


def test_a_base_too_long_for_the_suffix_is_refused_naming_the_room_left():
    with pytest.raises(ValueError, match=r"too long.*at most 51"):
        session_queue_name("b" * 60, user="alice", token="abcdef")
    assert len(session_queue_name("b" * 51, user="alice", token="abcdef")) == 64


@pytest.mark.parametrize("token", ["", "ABCDEF", "12345", "1234567", "xyzxyz"])
def test_a_bad_token_is_refused(token):
    with pytest.raises(ValueError, match="token"):
        session_queue_name("nb", user="u", token=token)


def test_an_empty_user_is_refused():
    with pytest.raises(ValueError, match="user"):
        session_queue_name("nb", user="", token="abcdef")


def test_without_a_login_name_the_user_is_anon(monkeypatch):
    def no_user() -> str:
        raise OSError("no login")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert user_name() == "anon"


def test_the_mask_covers_exactly_what_the_session_adds():
    name = session_queue_name("nb04-scaling", user="alice", token="0a1b2c")
    assert SESSION_SUFFIX.sub(".USER.KERNEL", f"{name}-b100") == "nb04-scaling.USER.KERNEL-b100"
    assert SESSION_SUFFIX.sub("", f"wqsim:{{{name}}}:task:42") == "wqsim:{nb04-scaling}:task:42"


def test_session_queue_name_is_exported_from_wqsim():
    assert wqsim.session_queue_name is session_queue_name
    assert "session_queue_name" in wqsim.__all__


def test_nbvals_sanitize_file_masks_the_session_part_with_the_same_pattern():
    """The notebooks print their queue names; nbval compares outputs with the committed ones only
    because notebooks/nbval_sanitize.cfg masks what session_queue_name adds, by this very pattern."""
    config = configparser.ConfigParser()
    config.read(Path(__file__).parent.parent / "notebooks" / "nbval_sanitize.cfg")
    assert config["session queue names"]["regex"] == SESSION_SUFFIX.pattern
