"""owner consent for the game: faces are shown in the game only if the owner opted in

Revision ID: ee387846b493
Revises: 3a7054899721
Create Date: 2026-11-25 12:59:45.819937

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'ee387846b493'
down_revision = '3a7054899721'
branch_labels = None
depends_on = None


def upgrade():
    # sa.false() renders as 0 on SQLite and false on PostgreSQL: existing analyses start without consent.
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.add_column(sa.Column('game_consent', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.drop_column('game_consent')
