"""RoastMyPost's tables (SQLAlchemy models with Prisma's names), sessions and migrations."""
