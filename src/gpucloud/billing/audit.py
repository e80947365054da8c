"""Checking the books: every rule of the ledger, re-derived from the entries in SQL.

For the operator (GET /admin/audit, `gpucloud admin audit`), e.g. from cron after a restore or
a manual change in the database. Each check is one set-based query over the whole ledger, so
it costs a few scans, not a loop per account; all of them read ONE snapshot (REPEATABLE READ on
PostgreSQL, the read transaction itself on SQLite), so billing running at the same time can
never produce a false alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

EXAMPLES = 5  # ids shown per failed check; `failures` counts them all

# What each entry kind does to the account balance and to the instance reserve.
_BALANCE_DELTA = ("CASE kind WHEN 'deposit' THEN amount WHEN 'refund' THEN amount "
                  "WHEN 'reserve' THEN -amount WHEN 'topup' THEN -amount ELSE 0 END")
_RESERVE_DELTA = ("CASE kind WHEN 'reserve' THEN amount WHEN 'topup' THEN amount "
                  "WHEN 'charge' THEN -amount WHEN 'refund' THEN -amount ELSE 0 END")


def _instance_sums(by: str) -> str:
    """The reserve and the spend the instances' entries add up to, per `by` (instance_id or
    account_id): what the instance rows, and their account's running totals, must hold."""
    return f"""SELECT {by}, SUM({_RESERVE_DELTA}) AS reserve,
                 SUM(CASE kind WHEN 'charge' THEN amount ELSE 0 END) AS spent
               FROM ledger_entries WHERE instance_id IS NOT NULL GROUP BY {by}"""


# name → (what it means, a query returning the offending ids)
CHECKS: dict[str, tuple[str, str]] = {
    "account_balances": (
        "Every account balance equals its deposits and refunds minus its reserves and top-ups.",
        f"""SELECT a.id FROM accounts a LEFT JOIN (
              SELECT account_id, SUM({_BALANCE_DELTA}) AS net FROM ledger_entries
              GROUP BY account_id) l ON l.account_id = a.id
            WHERE a.balance <> COALESCE(l.net, 0) OR a.balance < 0 ORDER BY a.id"""),
    "balance_after": (
        "Each account's latest entry records the balance the account holds.",
        """SELECT a.id FROM accounts a
           JOIN (SELECT account_id, MAX(id) AS last_id FROM ledger_entries
                 GROUP BY account_id) m ON m.account_id = a.id
           JOIN ledger_entries e ON e.id = m.last_id
           WHERE e.balance_after <> a.balance ORDER BY a.id"""),
    "instance_reserves": (
        "Every reserve equals what was reserved and topped up minus charges and refunds; "
        "`spent` equals the charges.",
        f"""SELECT i.id FROM instances i LEFT JOIN ({_instance_sums("instance_id")}
            ) l ON l.instance_id = i.id
            WHERE i.reserve <> COALESCE(l.reserve, 0) OR i.spent <> COALESCE(l.spent, 0)
               OR i.reserve < 0 ORDER BY i.id"""),
    "account_totals": (
        "Every account's `reserved` and `spent` equal the reserves and charges of its "
        "instances' entries.",
        f"""SELECT a.id FROM accounts a LEFT JOIN ({_instance_sums("account_id")}
            ) l ON l.account_id = a.id
            WHERE a.reserved <> COALESCE(l.reserve, 0) OR a.spent <> COALESCE(l.spent, 0)
            ORDER BY a.id"""),
    "orphan_entries": (
        "Every entry belongs to an existing account.",
        """SELECT CAST(e.id AS VARCHAR(20)) FROM ledger_entries e
           WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id)
           ORDER BY e.id"""),
    "amounts": (
        "Every amount is positive and every charge names its instance and hour.",
        """SELECT CAST(id AS VARCHAR(20)) FROM ledger_entries
           WHERE amount <= 0 OR (kind = 'charge' AND (instance_id IS NULL OR period_start IS NULL))
              OR kind NOT IN ('deposit', 'reserve', 'charge', 'topup', 'refund')
           ORDER BY id"""),
}

_TOTALS = text("""SELECT
  (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE kind = 'deposit'),
  (SELECT COALESCE(SUM(balance), 0) FROM accounts),
  (SELECT COALESCE(SUM(reserve), 0) FROM instances),
  (SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE kind = 'charge'),
  (SELECT COUNT(*) FROM ledger_entries)""")


@dataclass
class Check:
    name: str
    description: str
    failures: int
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0


@dataclass
class Report:
    deposits: int
    balances: int
    reserves: int
    charges: int
    entries: int
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def audit(s: Session) -> Report:
    """Run every check in the caller's (read) transaction."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    deposits, balances, reserves, charges, entries = s.execute(_TOTALS).one()
    conservation = Check(
        "conservation", "Deposits = account balances + instance reserves + charges.",
        0 if deposits == balances + reserves + charges else 1)
    if not conservation.ok:
        conservation.examples = [f"off by {deposits - (balances + reserves + charges)} micro-USDC"]
    checks = [conservation]
    for name, (description, sql) in CHECKS.items():
        ids = s.execute(text(sql)).scalars().all()
        checks.append(Check(name, description, len(ids), [str(i) for i in ids[:EXAMPLES]]))
    return Report(int(deposits), int(balances), int(reserves), int(charges), int(entries),
                  checks)
