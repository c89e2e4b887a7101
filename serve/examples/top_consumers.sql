-- The ten devices that imported the most energy (kWh).
SELECT device_id, sum(usage) / 1000 AS kwh
FROM usage_1d
WHERE channel = 'energy_import'
GROUP BY device_id
ORDER BY kwh DESC, device_id
LIMIT 10
