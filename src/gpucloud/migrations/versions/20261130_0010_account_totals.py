"""accounts: running totals of reserved and spent

Revision ID: 20261130_0010
Revises: 20261130_0009
Create Date: 2026-11-30 23:50:00

GET /gpu/account summed the reserve and spend of every instance the account ever had on each
request; the ledger now keeps both totals on the account row. Existing accounts get them from
their instances here.
"""
import sqlalchemy as sa
from alembic import op

revision = '20261130_0010'
down_revision = '20261130_0009'
branch_labels = None
depends_on = None


# Plain ALTER TABLE, not a batch: on SQLite a batch rebuilds the table, and with foreign keys
# on, the instances and keys that reference accounts refuse the drop of the old one.
def upgrade() -> None:
    op.add_column('accounts', sa.Column('reserved', sa.BigInteger(), server_default='0',
                                        nullable=False))
    op.add_column('accounts', sa.Column('spent', sa.BigInteger(), server_default='0',
                                        nullable=False))
    op.execute("""UPDATE accounts SET
        reserved = (SELECT COALESCE(SUM(i.reserve), 0) FROM instances i
                    WHERE i.account_id = accounts.id),
        spent = (SELECT COALESCE(SUM(i.spent), 0) FROM instances i
                 WHERE i.account_id = accounts.id)""")


def downgrade() -> None:
    op.drop_column('accounts', 'spent')
    op.drop_column('accounts', 'reserved')
