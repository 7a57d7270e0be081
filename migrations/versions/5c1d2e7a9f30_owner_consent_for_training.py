"""owner consent for training: export-reviewed exports an analysis only if its owner opted in

Revision ID: 5c1d2e7a9f30
Revises: ee387846b493
Create Date: 2026-11-26 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5c1d2e7a9f30'
down_revision = 'ee387846b493'
branch_labels = None
depends_on = None


def upgrade():
    # sa.false() renders as 0 on SQLite and false on PostgreSQL: existing analyses start without consent.
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.add_column(sa.Column('training_consent', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.drop_column('training_consent')
