"""engine: gpu_allocations, GPU devices the control plane assigns to instances

Revision ID: 20261130_0003
Revises: 20261127_0002
Create Date: 2026-11-30 07:45:00

Drivers no longer touch the database (docs/drivers.md): the control plane assigns the GPU
devices a provider lists in its config, like it hands out host ports, and passes them to the
driver in the spec. Unique on (provider, device), so two processes can never give one GPU to
two instances.
"""
import sqlalchemy as sa
from alembic import op

revision = '20261130_0003'
down_revision = '20261127_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gpu_allocations',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
                  nullable=False),
        sa.Column('provider_id', sa.String(length=36), nullable=False),
        sa.Column('device', sa.String(length=128), nullable=False),
        sa.Column('instance_id', sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('provider_id', 'device', name='uq_gpu_allocation'),
    )
    with op.batch_alter_table('gpu_allocations', schema=None) as batch_op:
        batch_op.create_index('ix_gpu_allocations_instance', ['instance_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('gpu_allocations', schema=None) as batch_op:
        batch_op.drop_index('ix_gpu_allocations_instance')
    op.drop_table('gpu_allocations')
