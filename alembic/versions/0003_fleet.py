"""A fleet you can trust: preemptions that cost no attempt, rejected messages, the upkeep leader.

jobs gains ``preemptions`` (claims that ended in a preemption; only ``attempts - preemptions``
counts against max_attempts), ``preempt_requested`` (the ledger's half of a preemption notice),
``checkpoint_micros`` (metered cost at the last durable checkpoint) and ``publications`` (messages sent
after the admission's own). New tables: ``preemptions`` (what each preempted attempt charged and lost),
``rejected_messages`` (queue messages acknowledged without running) and ``leases`` (the single
upkeep leader).

Reviewed by hand against models/schema.py.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('preemptions', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('preempt_requested', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('checkpoint_micros', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('publications', sa.Integer(), nullable=False, server_default='0'))
        batch_op.create_check_constraint('job_preemptions_within_attempts', 'preemptions >= 0 AND preemptions <= attempts')
    op.create_table('preemptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=False),
    sa.Column('charged_micros', sa.BigInteger(), nullable=False),
    sa.Column('lost_micros', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('charged_micros >= 0 AND lost_micros >= 0 AND lost_micros <= charged_micros', name='preemption_loss_within_charge'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'attempt', name='preemption_once_per_attempt')
    )
    with op.batch_alter_table('preemptions', schema=None) as batch_op:
        batch_op.create_index('preemptions_by_job', ['job_id'], unique=False)
    op.create_table('rejected_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=False),
    sa.Column('queue', sa.String(length=200), nullable=True),
    sa.Column('task', sa.String(length=200), nullable=True),
    sa.Column('message_id', sa.String(length=200), nullable=True),
    sa.Column('content_type', sa.String(length=200), nullable=True),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('excerpt', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rejected_messages', schema=None) as batch_op:
        batch_op.create_index('rejected_by_time', ['received_at'], unique=False)
    op.create_table('leases',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('leases')
    with op.batch_alter_table('rejected_messages', schema=None) as batch_op:
        batch_op.drop_index('rejected_by_time')
    op.drop_table('rejected_messages')
    with op.batch_alter_table('preemptions', schema=None) as batch_op:
        batch_op.drop_index('preemptions_by_job')
    op.drop_table('preemptions')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('job_preemptions_within_attempts', type_='check')
        batch_op.drop_column('publications')
        batch_op.drop_column('checkpoint_micros')
        batch_op.drop_column('preempt_requested')
        batch_op.drop_column('preemptions')
