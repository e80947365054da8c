"""console sessions: an idle end beside the absolute one, both on the server clock

Revision ID: 20261130_0008
Revises: 20261130_0007
Create Date: 2026-11-30 11:00:00

`last_seen_at` is when the person was last active; a session ends `console_session_idle_seconds`
after it. The existing rows are deleted rather than converted: their times were wall-clock
and they had no idle end, so everyone signs in once more after the upgrade.
"""
import sqlalchemy as sa
from alembic import op

from gpucloud.db import UTCDateTime

revision = '20261130_0008'
down_revision = '20261130_0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM console_sessions")
    # SQLite cannot add a NOT NULL column without a default in place: rebuild the table.
    with op.batch_alter_table('console_sessions', recreate='always'
                              if op.get_bind().dialect.name == 'sqlite' else 'auto') as batch:
        batch.add_column(sa.Column('last_seen_at', UTCDateTime(), nullable=False))
        batch.create_index('ix_console_sessions_last_seen', ['last_seen_at'])


def downgrade() -> None:
    with op.batch_alter_table('console_sessions') as batch:
        batch.drop_index('ix_console_sessions_last_seen')
        batch.drop_column('last_seen_at')
