"""console sessions: signed-in browser sessions of the web console

Revision ID: 20261130_0005
Revises: 20261130_0004
Create Date: 2026-11-30 08:00:00

The cookie carries a random token; this table holds its SHA-256, the account and API key id
(or the operator flag), the CSRF token of the session's forms and a wall-clock expiry.
"""
import sqlalchemy as sa
from alembic import op

from gpucloud.db import UTCDateTime

revision = '20261130_0005'
down_revision = '20261130_0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('account_id', sa.String(length=36), nullable=True),
        sa.Column('api_key_id', sa.String(length=36), nullable=True),
        sa.Column('admin', sa.Boolean(), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('expires_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_console_sessions_expires', 'console_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_console_sessions_expires', table_name='console_sessions')
    op.drop_table('console_sessions')
