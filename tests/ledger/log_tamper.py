"""What someone who owns the database could do to a chain's log tiles, for tests that show what
verification then finds."""

from __future__ import annotations

import asyncpg


async def rewrite_tiles(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """Run `sql` on audit_log_tiles past its append-only trigger, as its owner could after
    turning triggers off (session_replication_role needs a superuser, as the tests run)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(sql, *args)


async def cut_tiles(conn: asyncpg.Connection, chain: int, size: int) -> None:
    """Trim the chain's tiles to those of a log of `size` leaves: a cut tail made whole."""
    await rewrite_tiles(
        conn,
        """DELETE FROM audit_log_tiles
           WHERE chain = $1 AND idx * 256 >= ($2::bigint >> (8 * level))""",
        chain,
        size,
    )
    await rewrite_tiles(
        conn,
        """UPDATE audit_log_tiles
           SET hashes = substring(hashes FROM 1 FOR
                                  32 * least(256, ($2::bigint >> (8 * level)) - idx * 256)::int)
           WHERE chain = $1""",
        chain,
        size,
    )
