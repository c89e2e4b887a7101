-- Energy imported per customer per day (kWh), from the daily usage table and the registry.
SELECT m.customer_id,
       u.window_start AS day,
       sum(u.usage) / 1000 AS kwh
FROM usage_1d u
JOIN meters m ON m.device_id = u.device_id
WHERE u.channel = 'energy_import'
GROUP BY m.customer_id, u.window_start
ORDER BY m.customer_id, day
