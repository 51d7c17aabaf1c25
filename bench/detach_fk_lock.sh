P="psql -h 127.0.0.1 -U postgres -X -q"
$P -c "DROP DATABASE IF EXISTS homepot_retention_fk" -c "CREATE DATABASE homepot_retention_fk"
D="$P -d homepot_retention_fk"
$D <<'SQL'
CREATE TABLE dev (id bigint primary key, v int);
INSERT INTO dev SELECT g, 0 FROM generate_series(1,100) g;
CREATE TABLE hist (id bigint, device_id bigint REFERENCES dev(id) DEFERRABLE INITIALLY DEFERRED, t timestamptz) PARTITION BY RANGE (t);
CREATE TABLE hist_a PARTITION OF hist FOR VALUES FROM ('2026-12-01') TO ('2026-12-02');
CREATE TABLE hist_b PARTITION OF hist FOR VALUES FROM ('2026-12-02') TO ('2026-12-03');
INSERT INTO hist VALUES (1, 1, '2026-12-01 10:00'), (2, 2, '2026-12-02 10:00');
SQL
# A device UPDATE held open (ROW EXCLUSIVE on dev), as a report's transaction would.
( $D -c "BEGIN; UPDATE dev SET v = v + 1 WHERE id = 5; SELECT pg_sleep(3); COMMIT;" & )
sleep 0.5
echo "with FK: DETACH CONCURRENTLY while a device UPDATE is open:"
start=$(date +%s.%N); $D -c "SET lock_timeout = '10s'" -c "ALTER TABLE hist DETACH PARTITION hist_a CONCURRENTLY"; end=$(date +%s.%N)
echo "took $(echo "$end - $start" | bc) s"
$D -c "ALTER TABLE hist DROP CONSTRAINT hist_device_id_fkey"
( $D -c "BEGIN; UPDATE dev SET v = v + 1 WHERE id = 5; SELECT pg_sleep(3); COMMIT;" & )
sleep 0.5
echo "without FK: DETACH CONCURRENTLY while a device UPDATE is open:"
start=$(date +%s.%N); $D -c "SET lock_timeout = '10s'" -c "ALTER TABLE hist DETACH PARTITION hist_b CONCURRENTLY"; end=$(date +%s.%N)
echo "took $(echo "$end - $start" | bc) s"
sleep 3
$P -c "DROP DATABASE homepot_retention_fk"
