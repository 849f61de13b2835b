"""Spend: where each job ran and what it did (forecasts), worker devices, budget thresholds and their events.

Reviewed by hand against models/schema.py.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('rate_micros_per_hour', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('work_steps', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=100), nullable=True))
    op.create_table('budget_thresholds',
    sa.Column('budget_id', sa.Integer(), nullable=False),
    sa.Column('threshold_ppm', sa.Integer(), nullable=False),
    sa.CheckConstraint('threshold_ppm > 0 AND threshold_ppm <= 1000000', name='threshold_is_a_share'),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], ),
    sa.PrimaryKeyConstraint('budget_id', 'threshold_ppm')
    )
    op.create_table('budget_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('budget_id', sa.Integer(), nullable=False),
    sa.Column('threshold_ppm', sa.Integer(), nullable=False),
    sa.Column('spent_micros', sa.BigInteger(), nullable=False),
    sa.Column('total_micros', sa.BigInteger(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('budget_id', 'threshold_ppm', name='event_once_per_threshold')
    )


def downgrade() -> None:
    op.drop_table('budget_events')
    op.drop_table('budget_thresholds')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('device')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('work_steps')
        batch_op.drop_column('rate_micros_per_hour')
        batch_op.drop_column('device')
