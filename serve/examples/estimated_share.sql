-- Per device and channel: the share of the energy from estimated 15-minute windows (gaps
-- spread by interpolation), 0..1.
SELECT device_id,
       channel,
       CAST(sum(CASE WHEN flags LIKE '%estimated%' THEN usage ELSE 0 END) AS DOUBLE)
         / NULLIF(CAST(sum(usage) AS DOUBLE), 0) AS estimated_share
FROM usage_15m
WHERE channel IN ('energy_import', 'energy_export', 'energy_yield')
GROUP BY device_id, channel
ORDER BY device_id, channel
