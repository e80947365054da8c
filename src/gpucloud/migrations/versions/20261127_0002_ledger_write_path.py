"""ledger write path: partial unique index for charges, no per-row account FK check

Revision ID: 20261127_0002
Revises: 20261127_0001
Create Date: 2026-11-27 13:45:00

An hour boundary writes two ledger rows per ACTIVE instance (charge, top-up), and on
PostgreSQL those inserts were half of its time. Two things each row paid for and did not need:

- The once-per-hour constraint indexed every row, although only charges carry a
  `period_start` (NULLs never collide). It is now a unique index over charges only — the same
  guarantee, enforced by the database, with half the index writes.
- The foreign key to accounts ran a lookup per inserted row. Accounts are never deleted, and
  every ledger insert names an account it has just read or locked; `gpucloud admin audit`
  (GET /admin/audit) reports any entry whose account is missing.

Also: `sim_workloads` declared a unique constraint on its primary key. PostgreSQL folded it
into the primary key; SQLite kept a second index, dropped here.
"""
import sqlalchemy as sa
from alembic import op

revision = '20261127_0002'
down_revision = '20261127_0001'
branch_labels = None
depends_on = None

CHARGES_ONLY = sa.text("period_start IS NOT NULL")
# SQLite reports the foreign key without a name; this convention gives it one to drop.
SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s"}


def _fk_name() -> str:
    if op.get_bind().dialect.name == "sqlite":
        return "fk_ledger_entries_account_id"
    return "ledger_entries_account_id_fkey"


def upgrade() -> None:
    with op.batch_alter_table('ledger_entries', naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.drop_constraint('uq_charge_once_per_period', type_='unique')
        batch_op.drop_constraint(_fk_name(), type_='foreignkey')
    op.create_index('uq_charge_once_per_period', 'ledger_entries',
                    ['instance_id', 'period_start'], unique=True,
                    postgresql_where=CHARGES_ONLY, sqlite_where=CHARGES_ONLY)
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table('sim_workloads') as batch_op:
            batch_op.drop_constraint('uq_sim_workload', type_='unique')


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table('sim_workloads') as batch_op:
            batch_op.create_unique_constraint('uq_sim_workload', ['instance_id'])
    op.drop_index('uq_charge_once_per_period', table_name='ledger_entries')
    with op.batch_alter_table('ledger_entries', naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.create_unique_constraint('uq_charge_once_per_period',
                                          ['instance_id', 'period_start'])
        batch_op.create_foreign_key(_fk_name(), 'accounts', ['account_id'], ['id'])
