"""redfish: machines, the bare-metal servers the control plane rents out and gets wiped

Revision ID: 20261130_0007
Revises: 20261130_0006
Create Date: 2026-11-30 08:55:00

A bare-metal provider's servers are allocated by the control plane like host ports and GPUs
(drivers touch no database). Unique on (provider, name); a machine is rented only while free,
and becomes free again only after the driver reported a successful wipe.
"""
import sqlalchemy as sa
from alembic import op

revision = '20261130_0007'
down_revision = '20261130_0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'machines',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
                  nullable=False),
        sa.Column('provider_id', sa.String(length=36), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('provider_id', 'name', name='uq_machine'),
    )
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.create_index('ix_machines_instance', ['instance_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('machines', schema=None) as batch_op:
        batch_op.drop_index('ix_machines_instance')
    op.drop_table('machines')
