"""idempotency keys: a retried deploy or deposit returns the first answer

Revision ID: 20261130_0004
Revises: 20261130_0003
Create Date: 2026-11-30 08:10:00

One row per (caller, Idempotency-Key): the request's fingerprint and the answer it got,
written in the transaction that did the work (gpucloud/idempotency.py).
"""
import sqlalchemy as sa
from alembic import op

from gpucloud.db import UTCDateTime

revision = '20261130_0004'
down_revision = '20261130_0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'idempotency_keys',
        sa.Column('scope', sa.String(length=64), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('scope', 'key'),
    )


def downgrade() -> None:
    op.drop_table('idempotency_keys')
