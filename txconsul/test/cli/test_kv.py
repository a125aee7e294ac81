"""``txconsul kv`` against a real in-process agent."""

from __future__ import annotations

import base64

from txconsul.test.cli.support import AgentTestCase


class KVGetPutTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()

    async def test_put_then_get_prints_the_raw_value(self) -> None:
        put = await self.cli("kv", "put", "web/maxconn", "100")
        self.assertEqual(
            (put.code, put.out, put.err), (0, "Success! Data written to: web/maxconn\n", "")
        )
        got = await self.cli("kv", "get", "web/maxconn")
        self.assertEqual((got.code, got.out, got.err), (0, "100\n", ""))

    async def test_get_of_a_missing_key_fails(self) -> None:
        got = await self.cli("kv", "get", "nope")
        self.assertEqual((got.code, got.out), (1, ""))
        self.assertEqual(got.err, "Error! No key exists at: nope\n")

    async def test_recurse_prints_key_value_lines_in_key_order(self) -> None:
        for key, value in [("a/z", "26"), ("a/b", "2"), ("ab", "x"), ("b", "no")]:
            await self.cli("kv", "put", key, value)
        got = await self.cli("kv", "get", "-recurse", "a")
        self.assertEqual((got.code, got.out), (0, "a/b:2\na/z:26\nab:x\n"))

    async def test_recurse_of_an_empty_prefix_prints_nothing(self) -> None:
        got = await self.cli("kv", "get", "-recurse", "none/")
        self.assertEqual((got.code, got.out, got.err), (0, "", ""))

    async def test_keys_roll_up_at_the_separator(self) -> None:
        for key in ("app/db/host", "app/db/port", "app/name"):
            await self.cli("kv", "put", key, "v")
        got = await self.cli("kv", "get", "-keys", "app/")
        self.assertEqual((got.code, got.out), (0, "app/db/\napp/name\n"))
        flat = await self.cli("kv", "get", "-keys", "-separator=", "app/")
        self.assertEqual(flat.out, "app/db/host\napp/db/port\napp/name\n")
        other = await self.cli("kv", "get", "-keys", "-separator=/", "app/d")
        self.assertEqual(other.out, "app/db/\n")

    async def test_detailed_prints_every_field(self) -> None:
        await self.cli("kv", "put", "-flags=42", "cfg", "on")
        entry = (await self.api("GET", "/v1/kv/cfg"))[0]
        got = await self.cli("kv", "get", "-detailed", "cfg")
        fields = dict(line.split(None, 1) for line in got.out.splitlines())
        self.assertEqual(
            fields,
            {
                "CreateIndex": str(entry["CreateIndex"]),
                "Flags": "42",
                "Key": "cfg",
                "LockIndex": "0",
                "ModifyIndex": str(entry["ModifyIndex"]),
                "Session": "-",
                "Value": "on",
            },
        )

    async def test_put_without_flags_resets_them(self) -> None:
        await self.cli("kv", "put", "-flags=7", "k", "1")
        self.assertEqual((await self.api("GET", "/v1/kv/k"))[0]["Flags"], 7)
        await self.cli("kv", "put", "k", "2")
        self.assertEqual((await self.api("GET", "/v1/kv/k"))[0]["Flags"], 0)

    async def test_dash_reads_the_value_from_stdin(self) -> None:
        data = b"line one\n\x00\xffbinary"
        put = await self.cli("kv", "put", "blob", "-", stdin=data)
        self.assertEqual(put.code, 0)
        entry = (await self.api("GET", "/v1/kv/blob"))[0]
        self.assertEqual(base64.b64decode(entry["Value"]), data)
        got = await self.cli("kv", "get", "-base64", "blob")
        self.assertEqual(got.out, base64.b64encode(data).decode() + "\n")

    async def test_at_path_reads_the_value_from_a_file(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"from a file")
        self.assertEqual((await self.cli("kv", "put", "f", "@" + path)).code, 0)
        self.assertEqual((await self.cli("kv", "get", "f")).out, "from a file\n")

    async def test_double_dash_lets_a_value_start_with_a_dash(self) -> None:
        self.assertEqual((await self.cli("kv", "put", "--", "counter", "-1")).code, 0)
        self.assertEqual((await self.cli("kv", "get", "counter")).out, "-1\n")

    async def test_recurse_detailed_prints_one_block_per_key(self) -> None:
        await self.cli("kv", "put", "d/a", "1")
        await self.cli("kv", "put", "d/b", "2")
        got = await self.cli("kv", "get", "-recurse", "-detailed", "d/")
        blocks = got.out.split("\n\n")
        self.assertEqual(len(blocks), 2)
        self.assertIn("Key              d/a\n", blocks[0])
        self.assertIn("Value            2\n", blocks[1])

    async def test_put_without_a_value_stores_an_empty_one(self) -> None:
        put = await self.cli("kv", "put", "empty")
        self.assertEqual(put.code, 0)
        self.assertIsNone((await self.api("GET", "/v1/kv/empty"))[0]["Value"])
        self.assertEqual((await self.cli("kv", "get", "empty")).out, "\n")

    async def test_keys_with_odd_characters_round_trip(self) -> None:
        key = "we ird/ü%2F?x=1#frag"
        self.assertEqual((await self.cli("kv", "put", key, "v")).code, 0)
        self.assertEqual((await self.cli("kv", "get", key)).out, "v\n")
        self.assertEqual((await self.cli("kv", "get", "-keys", "we")).out, "we ird/\n")

    async def test_a_leading_slash_is_dropped(self) -> None:
        await self.cli("kv", "put", "/lead", "1")
        self.assertEqual((await self.cli("kv", "get", "lead")).out, "1\n")

    async def test_value_over_the_size_limit_prints_the_agents_reason(self) -> None:
        big = b"x" * (512 * 1024 + 1)
        put = await self.cli("kv", "put", "big", "-", stdin=big)
        self.assertEqual((put.code, put.out), (1, ""))
        self.assertIn("Unexpected response code: 413", put.err)
        self.assertIn("Request body(s) too large, max size: 524288 bytes", put.err)
        self.assertEqual(put.err.count("\n"), 1)
        self.assertIsNone(await self.api("GET", "/v1/kv/big"))


class KVCasTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()
        await self.cli("kv", "put", "k", "v1")
        self.index = (await self.api("GET", "/v1/kv/k"))[0]["ModifyIndex"]

    async def test_cas_with_the_current_index_writes(self) -> None:
        put = await self.cli("kv", "put", "-cas", f"-modify-index={self.index}", "k", "v2")
        self.assertEqual((put.code, put.out), (0, "Success! Data written to: k\n"))
        self.assertEqual((await self.cli("kv", "get", "k")).out, "v2\n")

    async def test_cas_with_a_stale_index_fails_and_keeps_the_value(self) -> None:
        await self.cli("kv", "put", "k", "v2")
        put = await self.cli("kv", "put", "-cas", "-modify-index", str(self.index), "k", "v3")
        self.assertEqual((put.code, put.out), (1, ""))
        self.assertEqual(put.err, "Error! Did not write to k: CAS failed\n")
        self.assertEqual((await self.cli("kv", "get", "k")).out, "v2\n")

    async def test_cas_index_zero_only_creates(self) -> None:
        again = await self.cli("kv", "put", "-cas", "-modify-index=0", "k", "other")
        self.assertEqual(again.code, 1)
        fresh = await self.cli("kv", "put", "-cas", "-modify-index=0", "new", "n")
        self.assertEqual(fresh.code, 0)

    async def test_cas_needs_a_modify_index(self) -> None:
        put = await self.cli("kv", "put", "-cas", "k", "v2")
        self.assertEqual(put.code, 1)
        self.assertTrue(put.err.startswith("Must specify -modify-index with -cas!\n"))
        self.assertIn("Usage: txconsul kv put", put.err)

    async def test_delete_with_cas(self) -> None:
        stale = await self.cli("kv", "delete", "-cas", f"-modify-index={self.index + 100}", "k")
        self.assertEqual((stale.code, stale.err), (1, "Error! Did not delete key k: CAS failed\n"))
        self.assertEqual((await self.cli("kv", "get", "k")).code, 0)
        ok = await self.cli("kv", "delete", "-cas", f"-modify-index={self.index}", "k")
        self.assertEqual((ok.code, ok.out), (0, "Success! Deleted key: k\n"))
        self.assertEqual((await self.cli("kv", "get", "k")).code, 1)


class KVDeleteTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()
        for key in ("t/a", "t/b/c", "tx", "u"):
            await self.cli("kv", "put", key, "1")

    async def test_delete_removes_one_key(self) -> None:
        got = await self.cli("kv", "delete", "t/a")
        self.assertEqual((got.code, got.out), (0, "Success! Deleted key: t/a\n"))
        self.assertEqual(
            (await self.cli("kv", "get", "-keys", "-separator=")).out, "t/b/c\ntx\nu\n"
        )

    async def test_delete_recurse_removes_the_prefix(self) -> None:
        got = await self.cli("kv", "delete", "-recurse", "t/")
        self.assertEqual((got.code, got.out), (0, "Success! Deleted keys with prefix: t/\n"))
        self.assertEqual((await self.cli("kv", "get", "-keys", "-separator=")).out, "tx\nu\n")

    async def test_delete_of_an_absent_key_succeeds(self) -> None:
        self.assertEqual((await self.cli("kv", "delete", "zzz")).code, 0)

    async def test_delete_needs_a_key_unless_recursive(self) -> None:
        got = await self.cli("kv", "delete")
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("Error! Missing KEY argument\n"))

    async def test_cas_and_recurse_conflict(self) -> None:
        got = await self.cli("kv", "delete", "-cas", "-modify-index=1", "-recurse", "t")
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("Cannot specify both -cas and -recurse!\n"))


class KVLockTests(AgentTestCase):
    async def setUp(self) -> None:
        await self.start()

    async def test_acquire_needs_a_session(self) -> None:
        got = await self.cli("kv", "put", "-acquire", "lock", "me")
        self.assertEqual(got.code, 1)
        self.assertTrue(got.err.startswith("Must specify -session with -acquire or -release!\n"))

    async def test_acquire_with_an_unknown_session_reports_the_agents_error(self) -> None:
        got = await self.cli("kv", "put", "-acquire", "-session=no-such-session", "lock", "me")
        self.assertEqual((got.code, got.out), (1, ""))
        self.assertTrue(
            got.err.startswith("Error! Failed writing data: Unexpected response code: 5"), got.err
        )
        self.assertIsNone(await self.api("GET", "/v1/kv/lock"))
