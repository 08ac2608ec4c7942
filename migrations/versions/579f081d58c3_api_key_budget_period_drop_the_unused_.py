"""api key budget period; drop the unused spent_usd

Revision ID: 579f081d58c3
Revises: 28d31e84871e
Create Date: 2026-12-06 18:10:55.889331

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '579f081d58c3'
down_revision: str | None = '28d31e84871e'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # existing keys keep their limit, now per calendar month (UTC)
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('budget_period', sa.String(length=8),
                                      server_default='month', nullable=False))
        batch_op.drop_column('spent_usd')


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spent_usd', sa.Double(), server_default='0',
                                      nullable=False))
        batch_op.drop_column('budget_period')
