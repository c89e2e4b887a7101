-- Invoice totals per billing run and customer (statement lines of the published runs).
SELECT period, run, customer_id, currency, sum(amount) AS total
FROM statement_lines
GROUP BY period, run, customer_id, currency
ORDER BY period, run, customer_id
