-- Energy imported per customer this month against last month (kWh); "this month" is the
-- month of the newest daily window.
WITH latest AS (SELECT date_trunc('month', max(window_start)) AS this_month FROM usage_1d)
SELECT m.customer_id,
       sum(CASE WHEN u.window_start >= l.this_month THEN u.usage END) / 1000 AS this_month_kwh,
       sum(CASE WHEN u.window_start < l.this_month THEN u.usage END) / 1000 AS last_month_kwh
FROM usage_1d u
JOIN meters m ON m.device_id = u.device_id
CROSS JOIN latest l
WHERE u.channel = 'energy_import'
  AND u.window_start >= l.this_month - INTERVAL '1 month'
GROUP BY m.customer_id
ORDER BY m.customer_id
