"""GPU interface stored upper case

Revision ID: 20261130_0003
Revises: 20261127_0002
Create Date: 2026-11-30 08:00:00

The Fluence docs show the interface upper case in container plans (`"SXM"`, `"PCIE"`) and lower
case in VM/bare-metal plans and instances. Offers used to keep whatever the operator typed, so
two offers of one GPU could show `pcie` and `PCIE` and fall into two VM plan groups. One
canonical value (upper case) is stored; each endpoint renders it in its own case. Instances'
`resources` snapshots need no change: they are rendered lower case whatever they hold.
"""
from alembic import op

revision = '20261130_0003'
down_revision = '20261127_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE offers SET gpu_interface = UPPER(gpu_interface) "
               "WHERE gpu_interface <> UPPER(gpu_interface)")


def downgrade() -> None:
    """Nothing to undo: the old code shows upper-case values as stored."""
