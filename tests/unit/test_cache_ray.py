"""The Ray engine's address rule (no Ray started: resolve_address never imports ray)."""

from __future__ import annotations

import pytest

from wellfed.cache._ray import resolve_address


def test_none_is_a_new_local_instance_when_ray_address_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None)[0] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "")  # empty counts as unset, as in Ray
    assert resolve_address(None)[0] == "local"


def test_none_follows_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == ("10.0.0.5:6379", "RAY_ADDRESS")


@pytest.mark.parametrize("given", ["auto", "local", "127.0.0.1:6379", "ray://head:10001"])
def test_a_given_address_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(given) == (given, "given")
