-- Tags of a template build (JSON array of strings): "name:tag" resolves to
-- the newest ready build carrying the tag.
ALTER TABLE template_builds ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
