"""Why each attempt stopped (jobs.stop_reason), and the warnings a job recorded (job_notes).

Reviewed by hand against models/schema.py.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

STOP_REASONS = "('budget','cancel','preemption','time_limit','error','lost')"


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stop_reason', sa.String(length=20), nullable=True))
        batch_op.create_check_constraint('job_stop_reason_known', f"stop_reason IS NULL OR stop_reason IN {STOP_REASONS}")
    op.create_table('job_notes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job_notes', schema=None) as batch_op:
        batch_op.create_index('notes_by_job', ['job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('job_notes', schema=None) as batch_op:
        batch_op.drop_index('notes_by_job')
    op.drop_table('job_notes')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('job_stop_reason_known', type_='check')
        batch_op.drop_column('stop_reason')
