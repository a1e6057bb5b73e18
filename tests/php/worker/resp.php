<?php
/* A minimal RESP client over a plain socket (no extension needed), for the enqueue scripts. */

function resp_reply($fp)
{
    $line = fgets($fp);
    if ($line === false) {
        throw new RuntimeException('Redis closed the connection');
    }
    $type = $line[0];
    $rest = substr($line, 1, -2);
    switch ($type) {
        case '+':
            return $rest;
        case '-':
            throw new RuntimeException('Redis error: ' . $rest);
        case ':':
            return (int)$rest;
        case '$':
            $len = (int)$rest;
            if ($len < 0) {
                return null;
            }
            $data = '';
            while (strlen($data) < $len + 2) {
                $chunk = fread($fp, $len + 2 - strlen($data));
                if ($chunk === false || $chunk === '') {
                    throw new RuntimeException('short read from Redis');
                }
                $data .= $chunk;
            }
            return substr($data, 0, $len);
        case '*':
            $n = (int)$rest;
            if ($n < 0) {
                return null;
            }
            $items = array();
            for ($i = 0; $i < $n; $i++) {
                $items[] = resp_reply($fp);
            }
            return $items;
    }
    throw new RuntimeException('unexpected reply from Redis: ' . $line);
}

function resp_call($fp, array $args)
{
    $out = '*' . count($args) . "\r\n";
    foreach ($args as $arg) {
        $arg = (string)$arg;
        $out .= '$' . strlen($arg) . "\r\n" . $arg . "\r\n";
    }
    fwrite($fp, $out);
    return resp_reply($fp);
}
