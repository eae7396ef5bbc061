-- Hand-written steps (scripts/upgrade-steps/0.2.0--0.3.0.sql, after the drafted part): the
-- triggers of the new table pgflow.link_outbox, and when the triggers fire, as sql/links.sql
-- sets them.
CREATE TRIGGER link_arrive BEFORE INSERT ON pgflow.link_outbox
    FOR EACH ROW EXECUTE FUNCTION pgflow._link_arrive();
ALTER TABLE pgflow.link_outbox ENABLE REPLICA TRIGGER link_arrive;
CREATE TRIGGER link_outbox_guard BEFORE INSERT ON pgflow.link_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION pgflow._link_outbox_guard();
ALTER TABLE pgflow.message ENABLE ALWAYS TRIGGER message_stats;
ALTER TABLE pgflow.message ENABLE ALWAYS TRIGGER message_group_advance;
ALTER TABLE pgflow.archive ENABLE ALWAYS TRIGGER archive_stats;
ALTER TABLE pgflow.dead ENABLE ALWAYS TRIGGER dead_stats;
