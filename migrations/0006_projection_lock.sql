-- A projection page's first step in one round trip instead of two: lock the registry row
-- (FOR SHARE: a version switch takes it FOR UPDATE) and then the active version's
-- position (FOR UPDATE). Two statements inside, each with its own snapshot, as before: a
-- page blocked by a switch reads the new version's position after the switch commits.
-- It also turns off waiting for the WAL flush for the rest of the page's transaction
-- (read models are derived; a page lost in a crash is applied again from the store).
CREATE FUNCTION lock_projection_page(projection text, OUT version integer, OUT tracked bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    SELECT r.active_version INTO version FROM projections r
    WHERE r.name = projection FOR SHARE;
    IF version IS NULL THEN
        RETURN;
    END IF;
    SELECT p.position INTO tracked FROM projection_positions p
    WHERE p.name = projection AND p.version = lock_projection_page.version FOR UPDATE;
    PERFORM set_config('synchronous_commit', 'off', true);
END;
$$;
