"""redfish: machine inventory, what each BMC reported (CPUs, memory, GPUs, power)

Revision ID: 20261130_0009
Revises: 20261130_0008
Create Date: 2026-11-30 11:10:00

Read over Redfish at registration and from the admin inventory action, checked against the
offers a machine serves (a contradiction is refused), and shown in GET /admin/machines; what
the BMC does not report is kept as null ("unverified").
"""
import sqlalchemy as sa
from alembic import op

revision = '20261130_0009'
down_revision = '20261130_0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('inventory', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('inventory_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_column('inventory_at')
        batch_op.drop_column('inventory')
