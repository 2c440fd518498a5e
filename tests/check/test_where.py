"""Frames are attributed by package directory, not by words in a path (CI clones under /check/)."""

import os

import megatron.core

import csmoe_megatron.moe.layer as layer
from csmoe_megatron.check import where


def test_our_frames_are_named_from_the_package_root():
    assert where._short(layer.__file__) == os.path.join("csmoe_megatron", "moe", "layer.py")


def test_megatron_frames_are_named_from_megatron_core():
    short = where._short(megatron.core.__file__)
    assert short == os.path.join("megatron", "core", "__init__.py")


def test_the_check_itself_and_foreign_code_are_not_project_frames():
    assert where._short(where.__file__) is None
    assert where._short(os.path.join(os.sep, "check", "work", "other", "script.py")) is None
    assert where._short(os.path.join(os.sep, "home", "torch", "csmoe_megatron_fork.py")) is None
