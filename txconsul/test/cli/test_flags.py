"""Consul-style flags rewritten for getopt."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txconsul.cli.flags import translate

LONG = ["recurse", "keys", "http-addr=", "separator=", "help"]


class TranslateTests(SynchronousTestCase):
    def test_single_dash_long_names_get_two_dashes(self) -> None:
        self.assertEqual(
            translate(["-recurse", "-http-addr=a:1", "k"], LONG),
            ["--recurse", "--http-addr=a:1", "k"],
        )

    def test_a_value_in_the_next_argument_is_not_mistaken_for_a_flag(self) -> None:
        self.assertEqual(
            translate(["-separator", "-", "-keys", "p"], LONG),
            ["--separator", "-", "--keys", "p"],
        )

    def test_translation_stops_at_the_first_argument(self) -> None:
        self.assertEqual(translate(["k", "-recurse"], LONG), ["k", "-recurse"])
        self.assertEqual(translate(["-keys", "-", "-x"], LONG), ["--keys", "-", "-x"])

    def test_double_dash_ends_the_flags(self) -> None:
        self.assertEqual(translate(["-keys", "--", "-5"], LONG), ["--keys", "--", "-5"])

    def test_gnu_forms_pass_through(self) -> None:
        self.assertEqual(
            translate(["--recurse", "--http-addr", "a:1", "k"], LONG),
            ["--recurse", "--http-addr", "a:1", "k"],
        )

    def test_boolean_flags_take_go_truth_values(self) -> None:
        self.assertEqual(translate(["-recurse=true", "k"], LONG), ["--recurse", "k"])
        self.assertEqual(translate(["-recurse=false", "-keys=0", "k"], LONG), ["k"])
        self.assertEqual(translate(["-recurse=maybe"], LONG), ["--recurse=maybe"])

    def test_known_short_options_stay_short(self) -> None:
        self.assertEqual(translate(["-h"], LONG, "h"), ["-h"])
        self.assertEqual(translate(["-d", "x", "k"], LONG, "d:"), ["-d", "x", "k"])

    def test_unknown_names_are_left_for_getopt_to_refuse(self) -> None:
        self.assertEqual(translate(["-bogus", "k"], LONG), ["--bogus", "k"])
